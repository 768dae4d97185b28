"""The client end to end, over real sockets: totals, rendez-vous, overflow, errors."""

from __future__ import annotations

import asyncio
import gc
import math
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import DatagramReceiver, StalledTransport

from conveyor.client import Client

pytestmark = pytest.mark.timeout(60)


def test_eight_threads_exact_totals(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, tags=["env:test"])  # type: ignore[attr-defined]
    per_thread = 100_000
    start = threading.Barrier(8)

    def record(thread: int) -> None:
        bound = client.counter("bound.hits", tags=["thread:all"])
        start.wait()
        for i in range(per_thread):
            if i % 4 == 0:
                bound.increment()
            else:
                client.increment("orders.placed", tags=["country:de", f"shard:{i % 2}"])

    threads = [threading.Thread(target=record, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=30)
    received = udp_receiver.take()
    counts = received.counts
    assert counts[("bound.hits", ("env:test", "thread:all"))] == 8 * per_thread // 4
    shard0 = counts[("orders.placed", ("country:de", "env:test", "shard:0"))]
    shard1 = counts[("orders.placed", ("country:de", "env:test", "shard:1"))]
    assert shard0 + shard1 == 8 * per_thread * 3 // 4
    stats = client.statistics()
    assert stats.recorded == stats.sent == 8 * per_thread
    assert stats.dropped_total == 0 and stats.pending == 0
    assert received.bad_lines == 0
    client.close()


def test_flush_returns_only_after_the_data_is_on_the_socket(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, flush_interval=3600)  # type: ignore[attr-defined]
    for round_ in range(5):
        client.gauge("queue.depth", round_)
        client.histogram("latency", 0.5 + round_)
        assert client.flush(timeout=10)
        # No waiting: the datagrams must already be in the receiver's buffer.
        received = udp_receiver.take()
        assert received.gauges[("queue.depth", ())] == round_
        assert received.sample_counts[("h", "latency", ())] == round_ + 1
    client.close()


def test_flush_covers_the_current_aggregation_interval(udp_receiver: DatagramReceiver) -> None:
    # The ThreadStats trap (flush only sent past intervals) does not exist here.
    client = Client(url=udp_receiver.url, flush_interval=3600)  # type: ignore[attr-defined]
    client.increment("health_check")
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts[("health_check", ())] == 1
    client.close()


def test_aggregated_sender_sleeps_until_the_interval_ends(udp_receiver: DatagramReceiver) -> None:
    # Under the GIL each round of the sender is time taken from the application: with
    # aggregation on it runs when a call starts it, then not again before the interval
    # ends (a 0.1 s tick would have run about ten rounds in this second).
    client = Client(url=udp_receiver.url, flush_interval=1.0)  # type: ignore[attr-defined]
    for _ in range(100):
        client.increment("requests")
        client.gauge("inflight", 3)
    udp_receiver.sock.settimeout(10)
    packet = udp_receiver.sock.recv(65536)  # the rendez-vous: the interval's flush
    udp_receiver.received.add(packet)
    assert udp_receiver.received.counts[("requests", ())] == 100
    assert client.statistics().sender_rounds <= 3
    client.close()


def test_unaggregated_sender_sends_within_a_tick(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, aggregate=False, flush_interval=3600)  # type: ignore[attr-defined]
    client.increment("requests")
    udp_receiver.sock.settimeout(10)
    started = time.monotonic()
    packet = udp_receiver.sock.recv(65536)  # no flush(): the sender's own tick
    assert packet == b"requests:1|c\n"
    assert time.monotonic() - started < 5  # a tick is 0.1 s; only a stuck sender is late
    client.close()


def _fill_while_stalled(client: Client, stalled: StalledTransport) -> threading.Thread:
    """Get the sender stuck inside ``send`` and return the thread whose flush did it."""
    client.increment("warmup")
    flusher = threading.Thread(target=client.flush, kwargs={"timeout": 30})
    flusher.start()
    assert stalled.entered.wait(10)
    return flusher


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_overflow_drops_exactly_what_it_reports(policy: Any) -> None:
    stalled = StalledTransport()
    client = Client(transport=stalled, aggregate=False, max_queue=1000, overflow=policy)
    flusher = _fill_while_stalled(client, stalled)
    for i in range(5000):
        client.gauge("g", i)
    reason = "queue_full" if policy == "drop_newest" else "queue_evicted"
    stats = client.statistics()
    assert stats.dropped[reason] == 4000
    assert stats.dropped_total == 4000
    stalled.release.set()
    flusher.join()
    assert client.flush(timeout=30)
    values = [m.values[0] for m in stalled.received.metrics if m.name == "g"]
    expected = range(1000) if policy == "drop_newest" else range(4000, 5000)
    assert values == [float(v) for v in expected]
    stats = client.statistics()
    assert stats.recorded == 5001
    assert stats.sent + stats.dropped_total == stats.recorded and stats.pending == 0
    client.close()


def test_overflow_block_waits_then_drops_and_counts() -> None:
    stalled = StalledTransport()
    client = Client(
        transport=stalled, aggregate=False, max_queue=100, overflow="block", block_timeout=0.2
    )
    flusher = _fill_while_stalled(client, stalled)
    for i in range(100):
        client.gauge("g", i)  # fills the queue without blocking
    client.gauge("g", 100)  # no room: blocks for block_timeout, then is dropped
    assert client.statistics().dropped["block_timeout"] == 1

    unblocked = threading.Event()

    def blocked_caller() -> None:
        client.gauge("g", 101)  # blocks until the sender makes room
        unblocked.set()

    caller = threading.Thread(target=blocked_caller)
    caller.start()
    stalled.release.set()
    caller.join(10)
    assert unblocked.is_set()
    flusher.join()
    assert client.flush(timeout=30)
    values = sorted(m.values[0] for m in stalled.received.metrics if m.name == "g")
    assert values == [float(v) for v in [*range(100), 101]]
    stats = client.statistics()
    assert stats.recorded == 103 and stats.sent == 102 and stats.dropped_total == 1
    client.close()


def test_histograms_are_sampled_but_counts_stay_exact(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, max_samples_per_context=64)  # type: ignore[attr-defined]
    for i in range(10_000):
        client.distribution("payload.bytes", i)
    assert client.flush(timeout=10)
    received = udp_receiver.take()
    key = ("d", "payload.bytes", ())
    assert len(received.samples[key]) == 64
    assert received.sample_counts[key] == pytest.approx(10_000, rel=1e-9)
    assert set(received.samples[key]) <= {float(i) for i in range(10_000)}
    client.close()


def test_sets_gauges_and_sample_rates(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    for user in ["ann", "bob", "ann", "cid", "bob"]:
        client.set("users.seen", user)
    client.gauge("temperature", 20.5)
    client.gauge("temperature", 21.0)
    client.count("bytes", 10, sample_rate=1.0)
    client.decrement("stock", 3)
    assert client.flush(timeout=10)
    received = udp_receiver.take()
    assert received.sets[("users.seen", ())] == {"ann", "bob", "cid"}
    assert received.gauges[("temperature", ())] == 21.0
    assert received.counts[("bytes", ())] == 10
    assert received.counts[("stock", ())] == -3
    client.close()


def test_namespace_dict_tags_and_constant_tags(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, namespace="shop", tags={"env": "prod"})  # type: ignore[attr-defined]
    client.increment("orders", tags={"country": "de", "canary": None})
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts[("shop.orders", ("canary", "country:de", "env:prod"))] == 1
    client.close()


def test_a_tag_list_changed_after_the_call_does_not_change_what_was_recorded(
    udp_receiver: DatagramReceiver,
) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    tags = ["route:a"]
    client.increment("hits", tags=tags)
    tags[0] = "route:b"
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts == {("hits", ("route:a",)): 1}
    client.close()


def test_events_and_service_checks(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, tags=["env:test"])  # type: ignore[attr-defined]
    client.event("deploy", "v1.2 shipped\nall green", alert_type="info", tags=["team:core"])
    client.service_check("db.up", Client.CRITICAL, message="connection refused")
    assert client.flush(timeout=10)
    received = udp_receiver.take()
    (event,) = received.events
    assert event.title == "deploy" and event.text == "v1.2 shipped\nall green"  # type: ignore[attr-defined]
    assert event.tags == ("team:core", "env:test")  # type: ignore[attr-defined]
    (check,) = received.service_checks
    assert check.name == "db.up" and check.status == 2  # type: ignore[attr-defined]
    assert check.message == "connection refused"  # type: ignore[attr-defined]
    client.close()


def test_timed_context_manager_decorator_and_coroutine(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, aggregate=False)  # type: ignore[attr-defined]
    with client.timed("block.seconds"):
        pass

    @client.timed("function.ms", use_ms=True)
    def function() -> int:
        return 7

    @client.timed("coroutine.seconds")
    async def coroutine() -> int:
        await asyncio.sleep(0)
        return 8

    assert function() == 7
    assert asyncio.run(coroutine()) == 8
    assert client.flush(timeout=10)
    names = [m.name for m in udp_receiver.take().metrics if m.type == "ms"]
    assert sorted(names) == ["block.seconds", "coroutine.seconds", "function.ms"]
    client.close()


def test_without_threads_the_callers_do_the_work(udp_receiver: DatagramReceiver) -> None:
    before = set(threading.enumerate())
    client = Client(url=udp_receiver.url, threaded=False, batch=100)  # type: ignore[attr-defined]
    for _ in range(1000):
        client.increment("inline")
    assert set(threading.enumerate()) <= before  # this client started no thread
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts[("inline", ())] == 1000
    assert not client.statistics().sender_running
    client.close()


def test_close_flushes_and_later_calls_are_counted_as_dropped(
    udp_receiver: DatagramReceiver,
) -> None:
    with Client(url=udp_receiver.url) as client:  # type: ignore[attr-defined]
        client.increment("before.close")
    assert udp_receiver.take().counts[("before.close", ())] == 1
    client.increment("after.close")
    assert client.close() is True  # idempotent
    stats = client.statistics()
    assert stats.dropped["closed"] == 1
    assert stats.recorded == stats.sent + stats.dropped_total
    assert not stats.sender_running  # close() joined this client's sender thread


def test_context_limit_is_counted() -> None:
    stalled = StalledTransport()
    stalled.release.set()
    client = Client(transport=stalled, max_contexts=10)
    for i in range(25):
        client.gauge(f"g{i}", 1)
    assert client.flush(timeout=10)
    stats = client.statistics()
    assert stats.dropped["context_limit"] == 15
    assert stats.sent == 10
    client.close()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.increment(""), ValueError, "empty"),
        (lambda c: c.increment("a|b"), ValueError, "contains '\\|'"),
        (lambda c: c.increment(None), TypeError, "must be a str"),
        (lambda c: c.gauge("g", math.nan), ValueError, "finite"),
        (lambda c: c.gauge("g", "12"), TypeError, "must be a number"),
        (lambda c: c.histogram("h", 1, sample_rate=1.5), ValueError, "sample_rate"),
        (lambda c: c.set("s", "a|b"), ValueError, "contains '\\|'"),
        (lambda c: c.service_check("up", 7), ValueError, "status"),
        (lambda c: c.event("", "text"), ValueError, "title"),
        (lambda c: c.increment("x", tags="env:prod"), TypeError, "list of 'key:value'"),
        (lambda c: c.increment("x", tags=["env:prod", 7]), ValueError, "tags must be strings"),
        (lambda c: c.increment("x", tags=[["env:prod"]]), ValueError, "tags must be strings"),
        (lambda c: c.gauge("g", 1, tags=("a:b", None)), ValueError, "tags must be strings"),
        (lambda c: c.set("s", "m", tags=[b"a:b"]), ValueError, "tags must be strings"),
        (lambda c: c.counter("n", tags=[1.5]), ValueError, "tags must be strings"),
    ],
)
def test_impossible_input_raises_at_the_call(call: Any, error: type[Exception], match: str) -> None:
    client = Client(transport=StalledTransport())
    with pytest.raises(error, match=match):
        call(client)
    assert client.statistics().recorded == 0


def test_a_refused_call_costs_the_others_nothing(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    client.increment("good", tags=["a:b"])
    bad_tag_lists: list[Any] = [[1], [["a:b"]], [None]]
    for bad in bad_tag_lists:
        with pytest.raises(ValueError, match="tags must be strings"):
            client.increment("good", tags=bad)
        with pytest.raises(ValueError, match="tags must be strings"):
            client.histogram("h", 1.0, tags=bad)
    client.increment("good", tags=["a:b"])
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts == {("good", ("a:b",)): 2}
    stats = client.statistics()
    assert (stats.recorded, stats.sent, stats.dropped_total) == (2, 2, 0)
    client.close()


def test_repeated_increments_leave_nothing_new_for_the_cycle_collector() -> None:
    """Each context's key is made once: the calls queue that same object, so the
    objects the queue holds until the sender runs do not add up for the collector."""
    client = Client(transport=StalledTransport())  # never started: the queue only fills
    client.increment("warm", tags=["a:b"])
    client.counter("bound", tags=["a:b"]).increment()
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for _ in range(1000):
            client.increment("warm", tags=["a:b"])
        grown = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert grown < 50, f"{grown} tracked objects left per 1000 increments"
    keys = list(client._increments)  # the private queue: what this test is about
    assert all(key is keys[0] for key in keys)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="overflow must be one of"):
        Client(overflow="drop_everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_queue"):
        Client(max_queue=0)
    with pytest.raises(TypeError, match="not both"):
        Client(tags=["a:b"], constant_tags=["c:d"])


def test_packets_never_exceed_the_configured_size(udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url, max_packet_size=512, aggregate=False)  # type: ignore[attr-defined]
    for i in range(2000):
        client.histogram("sizes", i, tags=[f"bucket:{i % 50}"])
    assert client.flush(timeout=10)
    received = udp_receiver.take()
    assert len(received.packets) > 10
    assert max(len(p) for p in received.packets) <= 512
    assert sum(len(v) for v in received.samples.values()) == 2000


def test_a_unix_stream_client_reconnects_when_its_server_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "dsd.sock")
    client = Client(url=f"unixstream://{path}", aggregate=False)
    frames: list[bytes] = []

    def serve_once(server: socket.socket, want: int) -> None:
        connection, _ = server.accept()
        with connection:
            buffer = b""
            while len(frames) < want:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 4:
                    size = int.from_bytes(buffer[:4], "little")
                    if len(buffer) < 4 + size:
                        break
                    frames.append(buffer[4 : 4 + size])
                    buffer = buffer[4 + size :]

    for generation in range(2):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        server.bind(path)
        server.listen(1)
        want = generation + 1
        reader = threading.Thread(target=serve_once, args=(server, want))
        reader.start()
        # Until the client notices the restart (a failed write, then its back-off), a
        # flush may count its packet as dropped; it must get through within seconds.
        deadline = time.monotonic() + 10
        while len(frames) < want and time.monotonic() < deadline:
            client.gauge("generation", generation)
            client.flush(timeout=5)
            reader.join(timeout=0.05)
        reader.join(timeout=5)
        server.close()  # the server goes away (the accepted connection is closed too)
        assert len(frames) >= want, f"nothing received after restart {generation}"
    assert b"generation:1|g" in frames[-1]  # the restarted server got the new data
    stats = client.statistics()
    assert stats.recorded == stats.sent + stats.dropped_total  # retries' losses counted
    client.close()


def test_long_packed_lines_are_split_not_dropped(udp_receiver: DatagramReceiver) -> None:
    # 64 full-precision latencies with tags make a line longer than a UDP packet.
    client = Client(url=udp_receiver.url, max_samples_per_context=64)  # type: ignore[attr-defined]
    values = [i / 7_000_003 for i in range(1, 101)]
    for value in values:
        client.histogram("req.latency", value, tags=["route:/api/orders", "method:post"])
    assert client.flush(timeout=10)
    stats = client.statistics()
    assert stats.sent == 100 and stats.dropped_total == 0
    received = udp_receiver.take()
    key = ("h", "req.latency", ("method:post", "route:/api/orders"))
    assert len(received.samples[key]) == 64  # every kept sample arrived, over several lines
    assert received.sample_counts[key] == pytest.approx(100)
    assert max(len(packet) for packet in received.packets) <= 1432
