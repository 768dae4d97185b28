"""The dispatcher against a real local HTTP server: exact books in every scenario."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest
from delivery_support import FakeClock, Reply, Server, books_balance, serving

from conveyor import Dispatcher, HTTPTransport, Retry
from conveyor.delivery import DeliveryStatistics


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as s:
        yield s


def transport(server: Server, **kwargs: object) -> HTTPTransport:
    return HTTPTransport(server.url, read_timeout=10.0, **kwargs)  # type: ignore[arg-type]


def settled(d: Dispatcher, predicate: object, timeout: float = 10.0) -> bool:
    return d._books.wait(predicate, timeout)  # type: ignore[arg-type]


def check(stats: DeliveryStatistics) -> None:
    assert books_balance(stats), stats


@pytest.mark.timeout(30)
def test_everything_submitted_is_delivered_once_in_batches(server: Server) -> None:
    d = Dispatcher(transport(server, max_batch_items=100), max_workers=2)
    for i in range(1000):
        assert d.submit({"n": i})
    assert d.flush(10.0)
    stats = d.statistics()
    assert (stats.submitted, stats.delivered, stats.pending, stats.dropped_total) == (
        1000,
        1000,
        0,
        0,
    )
    check(stats)
    assert sorted(x["n"] for x in server.data()) == list(range(1000))
    assert len(server.accepted_ids) == 1000  # every item has its own idempotency key
    assert max(server.accepted_ids.values()) == 1
    assert server.requests <= 40  # batched, not one request per item
    assert server.connections <= 4  # kept alive
    assert d.close(5.0)
    assert not d.submit({"late": True})
    stats = d.statistics()
    assert stats.dropped["closed"] == 1 and stats.submitted == 1001
    check(stats)


@pytest.mark.timeout(30)
def test_drop_newest_refuses_when_full_and_counts_it(server: Server) -> None:
    server.gate = threading.Event()  # the endpoint hangs until released
    d = Dispatcher(
        transport(server, max_batch_items=1), max_workers=1, max_queue=8, overflow="drop_newest"
    )
    accepted = [i for i in range(50) if d.submit({"n": i})]
    assert server.wait(lambda s: s.active == 1)
    refused = d.statistics().dropped["queue_full"]
    assert refused >= 50 - 8 - 1 - len(accepted) + len(accepted) - 9 and refused == 50 - len(
        accepted
    )
    check(d.statistics())
    server.gate.set()
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.delivered == len(accepted) and stats.pending == 0
    assert sorted(x["n"] for x in server.data()) == accepted
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_drop_oldest_keeps_the_newest(server: Server) -> None:
    server.gate = threading.Event()
    d = Dispatcher(
        transport(server, max_batch_items=1), max_workers=1, max_queue=8, overflow="drop_oldest"
    )
    d.submit({"n": -1})
    assert server.wait(lambda s: s.active == 1)  # the worker holds item -1 in a request
    for i in range(100):
        assert d.submit({"n": i})  # never refused: the oldest makes room
    stats = d.statistics()
    assert stats.dropped["queue_evicted"] == 100 - 8
    check(stats)
    server.gate.set()
    assert d.flush(10.0)
    assert sorted(x["n"] for x in server.data()) == [-1, *range(92, 100)]
    check(d.statistics())
    d.close()


@pytest.mark.timeout(30)
def test_block_waits_then_gives_up(server: Server) -> None:
    server.gate = threading.Event()
    d = Dispatcher(
        transport(server, max_batch_items=1),
        max_workers=1,
        max_queue=2,
        overflow="block",
        block_timeout=0.2,
    )
    d.submit({"n": 0})
    assert server.wait(lambda s: s.active == 1)
    assert d.submit({"n": 1}) and d.submit({"n": 2})
    assert not d.submit({"n": 3})  # waited 0.2 s for room, then refused
    assert d.statistics().dropped["block_timeout"] == 1
    released = threading.Thread(target=server.gate.set)
    released.start()
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.delivered == 3
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_unencodable_and_oversized_items_are_dropped_by_reason(server: Server) -> None:
    d = Dispatcher(transport(server, max_batch_bytes=200))
    d.submit({"bad": object()})
    d.submit({"big": "x" * 500})
    d.submit({"ok": 1})
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.dropped["invalid"] == 1 and stats.dropped["too_large"] == 1
    assert stats.delivered == 1
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_batches_are_bounded_by_bytes(server: Server) -> None:
    d = Dispatcher(transport(server, max_batch_items=1000, max_batch_bytes=1000), max_workers=1)
    for i in range(100):
        d.submit({"n": i, "pad": "y" * 50})
    assert d.flush(10.0)
    assert d.statistics().delivered == 100
    assert server.requests >= 100 * 70 // 1000
    d.close()


@pytest.mark.timeout(30)
def test_other_4xx_are_rejected_with_their_reason_and_never_retried(server: Server) -> None:
    server.default = Reply(400)
    d = Dispatcher(transport(server, max_batch_items=10), max_workers=1)
    for i in range(25):
        d.submit({"n": i})
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.rejected == {"400 Bad Request": 25}
    assert stats.requests == server.requests == 3
    assert stats.breaker == "closed"
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_500_503_and_dropped_connections_are_retried(server: Server) -> None:
    # A dropped connection is retried once at once (a stale keep-alive), then counted.
    server.script = [Reply(500), Reply(503), Reply(drop=True), Reply(drop=True), Reply(408)]
    d = Dispatcher(
        transport(server), retry=Retry(initial=0.001, maximum=0.002), breaker_threshold=10
    )
    for i in range(10):
        d.submit({"n": i})
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.delivered == 10 and stats.pending == 0
    assert sorted(x["n"] for x in server.data()) == list(range(10))
    assert stats.request_failures["500 Internal Server Error"] == 1
    assert stats.request_failures["503 Service Unavailable"] == 1
    assert stats.request_failures["connection_dropped"] == 1
    assert stats.request_failures["408 Request Timeout"] == 1
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_retry_after_seconds_is_honoured(server: Server) -> None:
    clock = FakeClock()
    server.script = [Reply(429, {"Retry-After": "30"})]
    d = Dispatcher(transport(server), clock=clock)
    d.submit({"n": 1})
    assert settled(d, lambda b: b.requests == 1)
    assert d._retry_heap[0][0] == clock.now + 30  # due exactly when the server said
    clock.advance(29.9)
    assert d._supervisor_pass()
    assert d.statistics().retrying == 1 and server.requests == 1
    clock.advance(0.2)
    assert d._supervisor_pass()
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.delivered == 1 and server.requests == 2 and stats.breaker_opened == 0
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_retry_after_http_date_is_honoured(server: Server) -> None:
    clock = FakeClock()
    wall = 1_700_000_000.0
    server.script = [Reply(503, {"Retry-After": formatdate(wall + 20, usegmt=True)})]
    d = Dispatcher(transport(server), clock=clock, wall_clock=lambda: wall)
    d.submit({"n": 1})
    assert settled(d, lambda b: b.requests == 1)
    assert d._retry_heap[0][0] == pytest.approx(clock.now + 20)
    clock.advance(20)
    assert d._supervisor_pass()
    assert d.flush(10.0)
    assert d.statistics().delivered == 1
    d.close()


@pytest.mark.timeout(30)
def test_backoff_is_capped_jittered_and_bounded_by_the_deadline(server: Server) -> None:
    clock = FakeClock()
    server.default = Reply(500)
    retry = Retry(initial=1.0, maximum=4.0, deadline=20.0)
    d = Dispatcher(transport(server), clock=clock, retry=retry, breaker_threshold=100)
    d.submit({"n": 1})
    delays = []
    for attempt in range(1, 30):
        assert settled(d, lambda b, a=attempt: b.requests == a or b.resolved == 1)
        if d.statistics().pending == 0:
            break
        due = d._retry_heap[0][0]
        delays.append(due - clock.now)
        assert 0 <= due - clock.now <= retry.ceiling(attempt)
        clock.advance(due - clock.now)
        assert d._supervisor_pass()
    stats = d.statistics()
    assert stats.dropped["retry_deadline"] == 1 and stats.pending == 0
    assert 5 <= stats.requests <= 29  # 20 s of at most 4 s back-offs, then dropped
    assert max(delays) <= 4.0
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_a_retrying_item_does_not_hold_a_worker(server: Server) -> None:
    clock = FakeClock()
    server.script = [Reply(500)]
    d = Dispatcher(
        transport(server, max_batch_items=1),
        clock=clock,
        max_workers=1,
        retry=Retry(initial=10.0, maximum=10.0),
    )
    d.submit({"n": "A"})
    assert settled(d, lambda b: b.requests == 1)
    d.submit({"n": "B"})
    assert server.wait(lambda s: len(s.items) == 1)  # B went ahead of A's back-off
    assert server.data() == [{"n": "B"}]
    stats = d.statistics()
    assert stats.retrying == 1 and stats.workers == 1
    clock.advance(10.0)
    assert d._supervisor_pass()
    assert d.flush(10.0)
    assert server.data() == [{"n": "B"}, {"n": "A"}]
    d.close()


@pytest.mark.timeout(30)
def test_the_circuit_breaker_opens_probes_and_closes(server: Server) -> None:
    clock = FakeClock()
    server.default = Reply(503)
    d = Dispatcher(
        transport(server, max_batch_items=1),
        clock=clock,
        max_workers=1,
        breaker_threshold=3,
        breaker_cooldown=30.0,
        retry=Retry(initial=0.5, maximum=60.0, deadline=1000.0),
    )
    for i in range(5):
        d.submit({"n": i})
    assert settled(d, lambda b: b.requests == 3)
    assert d.statistics().breaker == "open"
    clock.advance(5.0)  # every back-off is due, but the breaker holds them
    assert d._supervisor_pass() and d._supervisor_pass()
    assert server.requests == 3
    clock.advance(25.0)  # cool-down over: one probe, which fails
    assert d._supervisor_pass()
    assert settled(d, lambda b: b.requests == 4)
    stats = d.statistics()
    assert stats.breaker == "open" and stats.breaker_opened == 2
    clock.advance(30.0)  # the cool-down doubled: still open
    assert d._supervisor_pass()
    assert server.requests == 4
    server.default = Reply(200)
    clock.advance(30.0)
    assert d._supervisor_pass()
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.breaker == "closed" and stats.delivered == 5 and stats.pending == 0
    assert server.requests == 4 + 5
    check(stats)
    d.close()


@pytest.mark.timeout(30)
def test_the_pool_grows_to_max_workers_under_a_slow_server_and_shrinks_back(server: Server) -> None:
    server.delay = 0.15
    d = Dispatcher(
        transport(server, max_batch_items=1),
        min_workers=1,
        max_workers=4,
        grow_age=0.02,
        idle_timeout=0.2,
    )
    reached = server.when_active(4)
    for i in range(30):
        d.submit({"n": i})
    assert reached.wait(10)
    assert d.flush(20.0)
    stats = d.statistics()
    assert stats.workers_peak == 4 and server.max_active == 4
    assert d._pool.wait_for(lambda n: n == 1, 10.0)  # idle workers left
    assert stats.delivered == 30
    check(d.statistics())
    d.close()


@pytest.mark.timeout(30)
def test_close_drops_what_it_cannot_send_and_says_so(server: Server) -> None:
    server.gate = threading.Event()
    d = Dispatcher(transport(server, max_batch_items=1), max_workers=1)
    for i in range(5):
        d.submit({"n": i})
    assert server.wait(lambda s: s.active == 1)
    assert not d.close(0.2)
    stats = d.statistics()
    assert stats.dropped["closed"] == 4 and stats.pending == 1  # one is in flight
    check(stats)
    server.gate.set()
    assert settled(d, lambda b: b.resolved == 5)
    check(d.statistics())


@pytest.mark.timeout(30)
def test_credentials_never_appear_in_reprs_logs_or_reasons(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from delivery_support import dead_url

    url = dead_url().replace("http://", "http://user:hunter2@") + "?api_key=hunter2"
    t = HTTPTransport(url, headers={"Authorization": "Bearer hunter2"}, connect_timeout=1.0)
    d = Dispatcher(t, retry=Retry(initial=0.001, maximum=0.001, deadline=0.0))
    d.submit({"n": 1})
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.dropped["retry_deadline"] == 1
    text = repr(t) + repr(d) + str(stats) + caplog.text
    assert "hunter2" not in text and "127.0.0.1" in text
    d.close()


@pytest.mark.timeout(30)
def test_tls_is_verified(tmp_path: object) -> None:
    import shutil
    import ssl
    import subprocess
    from pathlib import Path

    from delivery_support import Server

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    directory = Path(str(tmp_path))
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    server = Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.httpd.socket = context.wrap_socket(server.httpd.socket, server_side=True)
    url = server.url.replace("http://", "https://")
    try:
        untrusted = HTTPTransport(url).send([b"{}"])
        assert untrusted.status is None and untrusted.reason == "tls"
        trusted = HTTPTransport(url, ca_certs=str(cert)).send([b'{"id":"k","data":1}'])
        assert trusted.status == 200
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_send_timeout_bounds_the_whole_send_retry_included(server: Server) -> None:
    # The first request is dropped after 0.4 s (a stale keep-alive, retried at once);
    # the retry would take 0.4 s more. A 0.6 s budget must cover both attempts, not
    # each one: the send gives up at 0.6 s, not at 1.0 s.
    server.delay = 0.4  # each request takes this long: a slow endpoint
    server.script = [Reply(drop=True)]
    http = transport(server)
    started = time.monotonic()
    response = http.send([b'{"id": "a"}'], timeout=0.6)
    elapsed = time.monotonic() - started
    assert response.status is None and response.reason == "timeout"
    assert server.requests == 2  # the retry was made, within what was left
    assert elapsed < 0.85, elapsed
    http.close()
