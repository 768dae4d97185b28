"""conveyor and the `datadog` package, given the same calls, send the same metrics; and
code written for `datadog.DogStatsd` (its constructor calls, methods and attributes)
runs unchanged on `conveyor.Client`."""

from __future__ import annotations

import inspect
import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import DatagramReceiver, Received
from datadog.dogstatsd.base import DogStatsd

from ci_support import missing
from conveyor.client import Client
from conveyor.client._options import default_route

pytestmark = pytest.mark.timeout(60)

CALLS: list[Callable[[Any], None]] = [
    lambda c: c.increment("orders.placed", tags=["country:de"]),
    lambda c: c.increment("orders.placed", 5, tags=["country:fr"]),
    lambda c: c.decrement("stock.level"),
    lambda c: c.count("bytes.in", 1234),
    lambda c: c.gauge("queue.depth", 1.5, tags=["queue:mail"]),
    lambda c: c.histogram("request.size", 300),
    lambda c: c.distribution("request.latency", 0.25, tags=["route:/a", "method:get"]),
    lambda c: c.timing("db.query", 12),
    lambda c: c.set("users.seen", "ann"),
    lambda c: c.event("deploy", "v1.2 shipped", alert_type="success", tags=["team:core"]),
    lambda c: c.service_check("db.up", 1, tags=["db:main"], message="slow"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_TAGS", "DATADOG_TAGS", "DD_ENTITY_ID"):
        monkeypatch.delenv(name, raising=False)


def _receiver() -> DatagramReceiver:
    return DatagramReceiver(socket.AF_INET, ("127.0.0.1", 0))


def _metric_lines(receiver: DatagramReceiver) -> Counter[tuple[Any, ...]]:
    received = receiver.take()
    lines: Counter[tuple[Any, ...]] = Counter()
    for m in received.metrics:
        lines[(m.name, m.type, m.values, m.sample_rate, tuple(sorted(m.tags)), m.set_value)] += 1
    for e in received.events:
        lines[("event", repr(e))] += 1
    for s in received.service_checks:
        lines[("check", repr(s))] += 1
    return lines


@pytest.fixture
def receivers() -> Iterator[tuple[DatagramReceiver, DatagramReceiver]]:
    ours, theirs = _receiver(), _receiver()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_same_calls_same_lines_without_aggregation(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, theirs = receivers
    ours_port, theirs_port = ours.sock.getsockname()[1], theirs.sock.getsockname()[1]
    conveyor = Client(
        url=f"udp://127.0.0.1:{ours_port}", namespace="shop", tags=["env:test"], aggregate=False
    )
    datadog = DogStatsd(
        host="127.0.0.1",
        port=theirs_port,
        namespace="shop",
        constant_tags=["env:test"],
        disable_telemetry=True,
        origin_detection_enabled=False,
    )
    for call in CALLS:
        call(conveyor)
        call(datadog)
    assert conveyor.flush(timeout=10)
    datadog.flush()
    theirs_lines = _metric_lines(theirs)
    assert theirs_lines  # the peer did send
    assert _metric_lines(ours) == theirs_lines
    conveyor.close()


def test_aggregated_totals_match_the_peer(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, theirs = receivers
    conveyor = Client(url=f"udp://127.0.0.1:{ours.sock.getsockname()[1]}")
    datadog = DogStatsd(
        host="127.0.0.1",
        port=theirs.sock.getsockname()[1],
        disable_telemetry=True,
        origin_detection_enabled=False,
    )
    for i in range(300):
        for client in (conveyor, datadog):
            client.increment("hits", tags=[f"shard:{i % 3}"])
            client.count("bytes", i)
            client.gauge("last", i)
            client.set("members", str(i % 7))
    assert conveyor.flush(timeout=10)
    ours_received, theirs_received = ours.take(), theirs.take()
    assert ours_received.counts == theirs_received.counts
    assert ours_received.gauges == theirs_received.gauges
    assert ours_received.sets == theirs_received.sets
    # The peer sends one datagram per call; conveyor folds them into a handful.
    assert len(ours_received.packets) < 5 < len(theirs_received.packets)
    conveyor.close()


# -- the constructor ------------------------------------------------------------------

#: Constructor calls found in real code, as (positional after host and port, keywords).
#: Every one must build a client on both sides that sends the same metrics.
CONSTRUCTOR_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("host-port", (), {}),
    ("positional-max_buffer_size", (1432,), {}),
    ("positional-to-constant_tags", (None, 0.3, True, True, "shop", ["env:test"]), {}),
    ("namespace-constant_tags", (), {"namespace": "shop", "constant_tags": ["env:prod"]}),
    ("no-telemetry", (), {"disable_telemetry": True, "origin_detection_enabled": False}),
    ("telemetry-knobs", (), {"telemetry_min_flush_interval": 60, "telemetry_socket_timeout": 1}),
    ("aggregation-on", (), {"disable_aggregation": False, "flush_interval": 0.5}),
    ("aggregation-off", (), {"disable_aggregation": True}),
    ("buffering-on", (), {"disable_buffering": False}),
    ("max_buffer_len", (), {"max_buffer_len": 8192}),
    (
        "samples-per-context",
        (),
        {"disable_aggregation": False, "max_metric_samples_per_context": 16},
    ),
    (
        "background-sender",
        (),
        {"disable_background_sender": False, "sender_queue_size": 4096},
    ),
    (
        "background-sender-blocking",
        (),
        {"disable_background_sender": False, "sender_queue_timeout": None},
    ),
    (
        "background-sender-timeout",
        (),
        {"disable_background_sender": False, "sender_queue_timeout": 0.5},
    ),
    ("no-background-sender", (), {"disable_background_sender": True}),
    ("socket-timeouts", (), {"socket_timeout": None, "socket_connect_retry": True}),
    ("use_ms-rate", (), {"use_ms": True, "default_sample_rate": 1}),
    ("expiry-tracking", (), {"sender_queue_expiry_seconds": 30.0, "track_instance": False}),
    ("origin", (), {"container_id": "ci-0123abcd", "cardinality": "low"}),
]

#: The calls each constructed pair makes (no sampling, no clock: the totals must match).
FIXED_CALLS: list[Callable[[Any], None]] = [
    lambda c: c.increment("orders.placed", tags=["country:de"]),
    lambda c: c.increment("orders.placed", tags=["country:de"]),
    lambda c: c.increment("orders.placed", 5, tags=["country:fr"]),
    lambda c: c.decrement("stock.level"),
    lambda c: c.count("bytes.in", 1234),
    lambda c: c.gauge("queue.depth", 1.5, tags=["queue:mail"]),
    lambda c: c.gauge("queue.depth", 2.5, tags=["queue:mail"]),
    lambda c: c.histogram("request.size", 300),
    lambda c: c.histogram("request.size", 100),
    lambda c: c.distribution("request.latency", 0.25, tags=["route:/a"]),
    lambda c: c.timing("db.query", 12),
    lambda c: c.set("users.seen", "ann"),
    lambda c: c.set("users.seen", "bob"),
    lambda c: c.set("users.seen", "ann"),
]

TELEMETRY_PREFIX = "datadog.dogstatsd.client."


def _totals(received: Received) -> tuple[Any, ...]:
    """What an agent makes of the metrics received (DogStatsd's own telemetry left
    out: conveyor sends none)."""

    def ours(key: tuple[Any, ...]) -> bool:
        return not any(str(part).startswith(TELEMETRY_PREFIX) for part in key)

    samples = {k: sorted(v) for k, v in received.samples.items() if ours(k)}
    return (
        {k: v for k, v in received.counts.items() if ours(k)},
        {k: v for k, v in received.gauges.items() if ours(k)},
        {k: v for k, v in received.sets.items() if ours(k)},
        samples,
        {k: v for k, v in received.sample_counts.items() if ours(k)},
    )


def _origins(received: Received) -> set[tuple[str, str | None]]:
    """Every metric's (name, container id), telemetry left out."""
    return {
        (m.name, m.container_id)
        for m in received.metrics
        if not m.name.startswith(TELEMETRY_PREFIX)
    }


def _fields(packets: list[bytes], prefix: bytes) -> set[bytes]:
    """The values of one optional field (``card:``...) over every line received."""
    return {
        field.removeprefix(prefix)
        for packet in packets
        for line in packet.splitlines()
        if not line.startswith(TELEMETRY_PREFIX.encode())
        for field in line.split(b"|")[2:]
        if field.startswith(prefix)
    }


def _port(receiver: DatagramReceiver) -> int:
    port: int = receiver.sock.getsockname()[1]
    return port


def test_the_constructors_take_the_same_parameters_in_the_same_order() -> None:
    theirs = list(inspect.signature(DogStatsd.__init__).parameters)
    ours = list(inspect.signature(Client.__init__).parameters)
    assert ours[: len(theirs)] == theirs
    for name in ours[len(theirs) :]:  # conveyor's own options are keyword-only
        assert inspect.signature(Client.__init__).parameters[name].kind is (
            inspect.Parameter.KEYWORD_ONLY
        )


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [pytest.param(a, k, id=name) for name, a, k in CONSTRUCTOR_CALLS],
)
def test_real_world_constructor_calls_work_for_both(
    clean_env: None,
    receivers: tuple[DatagramReceiver, DatagramReceiver],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    ours, theirs = receivers
    telemetry = _receiver()  # where DogStatsd's telemetry may go, never conveyor's
    if any(key.startswith("telemetry") for key in kwargs):
        kwargs = {**kwargs, "telemetry_host": "127.0.0.1", "telemetry_port": _port(telemetry)}
    conveyor = Client("127.0.0.1", _port(ours), *args, **kwargs)
    datadog = DogStatsd("127.0.0.1", _port(theirs), *args, **kwargs)
    try:
        for call in FIXED_CALLS:
            call(conveyor)
            call(datadog)
        assert conveyor.flush(timeout=10)
        assert datadog.stop(timeout=10)  # DogStatsd's way to send everything
        ours_received, theirs_received = ours.take(), theirs.take()
        assert _totals(theirs_received)[0]  # the peer did send
        assert _totals(ours_received) == _totals(theirs_received)
        assert _origins(ours_received) == _origins(theirs_received)
        assert _fields(ours_received.packets, b"card:") == _fields(
            theirs_received.packets, b"card:"
        )
        assert ours_received.bad_lines == theirs_received.bad_lines == 0
        stats = conveyor.statistics()
        assert stats.recorded == stats.sent == len(FIXED_CALLS)
    finally:
        conveyor.close()
        telemetry.close()


def test_origin_fields_are_on_every_metric_line(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, _ = receivers
    client = Client("127.0.0.1", _port(ours), container_id="ci-42", cardinality="high")
    for call in FIXED_CALLS:
        call(client)
    client.gauge_with_timestamp("at", 1, 1_700_000_000)
    client.count_with_timestamp("at.count", 1, 1_700_000_000, cardinality="none")
    assert client.flush(timeout=10)
    received = ours.take()
    assert {m.container_id for m in received.metrics} == {"ci-42"}
    lines = [line for packet in received.packets for line in packet.splitlines()]
    assert len(lines) == len(received.metrics)
    assert all(line.endswith((b"|c:ci-42|card:high", b"|c:ci-42|card:none")) for line in lines)
    client.close()


def test_conveyors_old_positional_namespace_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="namespace= and tags= by keyword"):
        Client("127.0.0.1", 8125, "shop")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace= and tags= by keyword"):
        Client("127.0.0.1", 8125, None, ["env:prod"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggregate": True, "disable_aggregation": True},
        {"threaded": True, "disable_background_sender": False},
        {"max_queue": 10, "sender_queue_size": 10},
        {"max_samples_per_context": 8, "max_metric_samples_per_context": 8},
        {"max_packet_size": 1000, "max_buffer_len": 1000},
        {"overflow": "block", "sender_queue_timeout": 1.0},
        {"tags": ["a:b"], "constant_tags": ["c:d"]},
    ],
    ids="+".join,
)
def test_an_option_given_under_both_names_raises(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=r"give one|not both"):
        Client(url="udp://127.0.0.1:9", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cardinality": "medium"}, "cardinality must be one of"),
        ({"container_id": "a|b"}, "container_id must be"),
        ({"sender_queue_size": -1}, "sender_queue_size must be an int >= 0"),
        ({"sender_queue_timeout": -1}, "sender_queue_timeout must be 0"),
        ({"max_buffer_len": -5}, "max_buffer_len must be an int >= 0"),
    ],
)
def test_values_dogstatsd_would_misuse_raise_at_construction(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Client(url="udp://127.0.0.1:9", **kwargs)


def test_an_unknown_keyword_still_raises() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_bufer_len'"):
        Client(url="udp://127.0.0.1:9", max_bufer_len=1432)  # type: ignore[call-arg]


def test_sender_queue_options_become_conveyors_overflow_policy() -> None:
    def policy(client: Client) -> tuple[int, str, float]:
        return client._max_queue, client._overflow, client._block_timeout

    url = "udp://127.0.0.1:9"
    assert policy(Client(url=url)) == (65_536, "drop_newest", 1.0)
    assert policy(Client(url=url, sender_queue_size=100)) == (100, "drop_newest", 1.0)
    assert policy(Client(url=url, sender_queue_timeout=0.25)) == (65_536, "block", 0.25)
    blocking = policy(Client(url=url, sender_queue_timeout=None))
    assert blocking[1] == "block" and blocking[2] > 100 * 365 * 24 * 3600  # for ever
    assert not Client(url=url, disable_background_sender=True)._threaded
    assert Client(url=url, disable_background_sender=False)._threaded
    assert not Client(url=url, disable_aggregation=True)._sender_options["aggregate"]
    sampled = Client(url=url, max_metric_samples_per_context=5)._sender_options
    assert sampled["max_samples"] == 5


def test_use_default_route_sends_to_the_default_gateway(clean_env: None) -> None:
    # Nothing is recorded, so nothing is sent: the gateway is only compared.
    try:
        gateway = default_route()
    except ValueError as error:
        missing("a default route (/proc/net/route)", str(error))
    datadog = DogStatsd(port=8125, use_default_route=True, disable_telemetry=True)
    client = Client(port=8125, use_default_route=True)
    assert client.host == datadog.host == gateway
    assert client.port == datadog.port == 8125
    assert client.statistics().destination == f"udp://{gateway}:8125"


def test_default_route_reads_the_routing_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n"
    )
    assert default_route(str(table)) == "192.0.2.1"
    table.write_text("Iface\tDestination\tGateway\n")
    with pytest.raises(ValueError, match="names no default gateway"):
        default_route(str(table))
    with pytest.raises(ValueError, match="Linux only"):
        default_route(str(tmp_path / "missing"))


# -- attributes -----------------------------------------------------------------------


def test_attributes_read_as_dogstatsds(clean_env: None) -> None:
    options: dict[str, Any] = {
        "namespace": "shop",
        "constant_tags": ["env:prod", "team:core"],
        "use_ms": True,
        "default_sample_rate": 0.5,
    }
    datadog = DogStatsd("127.0.0.1", 8125, disable_telemetry=True, **options)
    client = Client("127.0.0.1", 8125, **options)
    for name in ("namespace", "host", "port", "socket_path", "use_ms", "default_sample_rate"):
        assert getattr(client, name) == getattr(datadog, name), name
    assert list(client.constant_tags) == list(datadog.constant_tags)
    assert client.disable_buffering is False

    client.use_ms = False
    client.default_sample_rate = 1.0
    assert (client.use_ms, client.default_sample_rate) == (False, 1.0)
    with pytest.raises(ValueError, match="default_sample_rate"):
        client.default_sample_rate = 0
    with pytest.raises(AttributeError, match="fixed at construction"):
        client.namespace = "other"
    with pytest.raises(AttributeError, match="fixed at construction"):
        client.constant_tags = ("a:b",)
    with pytest.raises(AttributeError):  # a tuple: an append fails, never does nothing
        client.constant_tags.append("a:b")  # type: ignore[attr-defined]


def test_socket_path_attribute(clean_env: None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "dsd.socket")
        datadog = DogStatsd(socket_path=path, disable_telemetry=True)
        client = Client(socket_path=path)
        assert (client.host, client.port, client.socket_path) == (
            datadog.host,
            datadog.port,
            datadog.socket_path,
        )
        assert client.socket_path == path


# -- methods --------------------------------------------------------------------------


def _both(
    receivers: tuple[DatagramReceiver, DatagramReceiver], **options: Any
) -> tuple[Client, DogStatsd]:
    ours, theirs = receivers
    conveyor = Client("127.0.0.1", _port(ours), **options)
    datadog = DogStatsd(
        "127.0.0.1",
        _port(theirs),
        disable_telemetry=True,
        origin_detection_enabled=False,
        **options,
    )
    return conveyor, datadog


def test_timestamped_metrics_keep_their_timestamps_and_match_the_peer(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, theirs = receivers
    conveyor, datadog = _both(receivers, namespace="shop", constant_tags=["env:test"])
    calls: list[Callable[[Any], None]] = [
        lambda c: c.gauge_with_timestamp("stock", 10, 1_700_000_000, tags=["sku:1"]),
        lambda c: c.gauge_with_timestamp("stock", 12, 1_700_000_060, tags=["sku:1"]),
        lambda c: c.count_with_timestamp("sold", 3, 1_700_000_000),
        lambda c: c.count_with_timestamp("sold", 4, timestamp=1_700_000_060),
        lambda c: c.count_with_timestamp("sold.untimed", 2),  # 0: no timestamp
        lambda c: c.gauge_with_timestamp("ratio", 0.5, 1_700_000_000, sample_rate=1),
    ]
    for call in calls:
        call(conveyor)
        call(datadog)
    assert conveyor.flush(timeout=10)
    datadog.flush()
    ours_lines, theirs_lines = _metric_lines(ours), _metric_lines(theirs)
    assert ours_lines == theirs_lines
    received = ours.received
    timestamps = sorted((m.name, m.values, m.timestamp) for m in received.metrics)
    assert timestamps == [
        ("shop.ratio", (0.5,), 1_700_000_000),
        ("shop.sold", (3.0,), 1_700_000_000),
        ("shop.sold", (4.0,), 1_700_000_060),
        ("shop.sold.untimed", (2.0,), None),
        ("shop.stock", (10.0,), 1_700_000_000),
        ("shop.stock", (12.0,), 1_700_000_060),
    ]
    stats = conveyor.statistics()
    assert stats.recorded == stats.sent == len(calls)
    conveyor.close()


def test_timestamped_metrics_are_never_aggregated(
    clean_env: None, udp_receiver: DatagramReceiver
) -> None:
    client = Client(url=udp_receiver.url, aggregate=True)  # type: ignore[attr-defined]
    for second in range(5):
        client.count_with_timestamp("jobs", 1, 1_700_000_000 + second)
        client.count_with_timestamp("jobs", 1, 1_700_000_000 + second)
    assert client.flush(timeout=10)
    metrics = udp_receiver.take().metrics
    assert len(metrics) == 10  # one line each: the agent aggregates by timestamp
    assert Counter(m.timestamp for m in metrics) == {1_700_000_000 + s: 2 for s in range(5)}
    client.close()


@pytest.mark.parametrize("timestamp", [-1, "1700000000", True, float("nan")])
def test_a_bad_timestamp_raises_at_the_call(timestamp: Any) -> None:
    client = Client(url="udp://127.0.0.1:9")
    with pytest.raises(ValueError, match="timestamp must be unix seconds"):
        client.gauge_with_timestamp("stock", 1, timestamp)
    assert client.statistics().recorded == 0
    client.close()


def test_distributed_sends_distributions_as_the_peer_does(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, theirs = receivers
    conveyor, datadog = _both(receivers, constant_tags=["env:test"])
    clients: tuple[Any, ...] = (conveyor, datadog)  # DogStatsd has no type hints

    def render() -> str:
        return "<html>"

    for client in clients:
        timed_render: Callable[[], str] = client.distributed("render.seconds", tags=["page:home"])(
            render
        )
        assert timed_render() == "<html>"
        with client.distributed("query.ms", use_ms=True):
            pass
        timer = client.distributed("manual.seconds")
        timer.start()
        timer.stop()
        assert timer.elapsed is not None and timer.elapsed >= 0
        timed = client.timed("manual.timing")
        timed.start()
        timed.stop()
    assert conveyor.flush(timeout=10)
    datadog.flush()

    def shapes(received: Received) -> Counter[tuple[str, str, tuple[str, ...]]]:
        return Counter((m.name, m.type, tuple(sorted(m.tags))) for m in received.metrics)

    expected = Counter(
        {
            ("render.seconds", "d", ("env:test", "page:home")): 1,
            ("query.ms", "d", ("env:test",)): 1,
            ("manual.seconds", "d", ("env:test",)): 1,
            ("manual.timing", "ms", ("env:test",)): 1,
        }
    )
    assert shapes(ours.take()) == shapes(theirs.take()) == expected
    conveyor.close()


def test_flush_like_methods_send_what_was_recorded(
    clean_env: None, udp_receiver: DatagramReceiver
) -> None:
    client = Client(url=udp_receiver.url, flush_interval=3600)  # type: ignore[attr-defined]
    sends: list[Callable[[], bool]] = [
        client.wait_for_pending,
        lambda: client.wait_for_pending(timeout=10),
        client.flush_aggregated_metrics,
        client.flush_buffered_metrics,
    ]
    for number, send in enumerate(sends):
        client.increment("hits", tags=[f"round:{number}"])
        assert send() is True
        assert udp_receiver.take().counts[("hits", (f"round:{number}",))] == 1
    client.open_buffer()
    client.open_buffer(max_buffer_size=50)  # DogStatsd's deprecated argument
    client.gauge("batched", 1)
    client.gauge("batched", 2)
    client.close_buffer()
    assert udp_receiver.take().gauges[("batched", ())] == 2
    client.close()


def test_no_op_methods_leave_the_client_working(
    clean_env: None, udp_receiver: DatagramReceiver
) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    client.increment("before")
    for name in (
        "close_socket",
        "enable_telemetry",
        "disable_telemetry",
        "pre_fork",
        "post_fork_parent",
        "post_fork_child",
    ):
        assert getattr(client, name)() is None
    client.disable_buffering = True  # a DogStatsd attribute; conveyor always packs
    client.increment("after")
    assert client.flush(timeout=10)
    received = udp_receiver.take()
    assert received.counts[("before", ())] == received.counts[("after", ())] == 1
    assert {m.name for m in received.metrics} == {"before", "after"}  # no telemetry
    client.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_stop_sends_everything_and_the_client_keeps_working_synchronously(
    clean_env: None, receivers: tuple[DatagramReceiver, DatagramReceiver]
) -> None:
    ours, theirs = receivers
    conveyor, datadog = _both(receivers, disable_background_sender=False)
    for client in (conveyor, datadog):
        client.increment("before.stop", 3)
        client.gauge("level", 7)
    assert conveyor.stop(timeout=10)
    assert datadog.stop(timeout=10)
    assert not conveyor.statistics().sender_running
    assert _totals(ours.take()) == _totals(theirs.take())
    assert ours.received.counts[("before.stop", ())] == 3

    # After stop() both send each call at once, on the caller's thread: no flush(),
    # and no waiting for a batch or a tick either.
    for receiver, client in ((ours, conveyor), (theirs, datadog)):
        client.increment("after.stop")
        assert receiver.wait_for_packet(timeout=10).counts[("after.stop", ())] == 1
        client.increment("after.stop")
        assert receiver.wait_for_packet(timeout=10).counts[("after.stop", ())] == 2
    assert not conveyor.statistics().sender_running

    # ... until the background sender is enabled again.
    conveyor.enable_background_sender()
    conveyor.increment("restarted")
    _wait_for(lambda: conveyor.statistics().sender_running)
    assert conveyor.flush(timeout=10)
    assert ours.take().counts[("restarted", ())] == 1
    stats = conveyor.statistics()
    assert stats.recorded == stats.sent == 5 and stats.dropped_total == 0
    conveyor.close()
    datadog.close_socket()


def test_disable_background_sender_does_the_work_on_the_callers_thread(
    clean_env: None, udp_receiver: DatagramReceiver
) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    client.increment("threaded")
    _wait_for(lambda: client.statistics().sender_running)
    assert client.disable_background_sender(timeout=10)
    assert not client.statistics().sender_running
    assert udp_receiver.take().counts[("threaded", ())] == 1  # sent before it returned
    for _ in range(10):
        client.increment("inline")
    assert client.flush(timeout=10)
    assert not client.statistics().sender_running  # the flush ran here, not in a thread
    assert udp_receiver.take().counts[("inline", ())] == 10
    client.enable_background_sender(sender_queue_size=1000, sender_queue_timeout=0.5)
    assert (client._max_queue, client._overflow, client._block_timeout) == (1000, "block", 0.5)
    client.increment("threaded.again")
    _wait_for(lambda: client.statistics().sender_running)
    assert client.flush(timeout=10)
    assert udp_receiver.take().counts[("threaded.again", ())] == 1
    client.close()


def test_aggregation_can_be_turned_off_and_on(
    clean_env: None, udp_receiver: DatagramReceiver
) -> None:
    client = Client(url=udp_receiver.url, flush_interval=3600)  # type: ignore[attr-defined]
    for _ in range(3):
        client.increment("folded")
    client.disable_aggregation()  # sends what was folded, then one line per call
    assert [m.values for m in udp_receiver.take().metrics] == [(3,)]
    for _ in range(3):
        client.increment("one.by.one")
        client.gauge("each", 1)
    assert client.flush(timeout=10)
    metrics = udp_receiver.take().metrics[1:]
    assert Counter(m.name for m in metrics) == {"one.by.one": 3, "each": 3}
    client.enable_aggregation(flush_interval=3600, max_samples_per_context=8)
    for _ in range(3):
        client.increment("folded.again")
    assert client.flush(timeout=10)
    again = [m for m in udp_receiver.take().metrics if m.name == "folded.again"]
    assert [m.values for m in again] == [(3,)]
    stats = client.statistics()
    assert stats.recorded == stats.sent == 12
    client.close()


def test_fork_hooks_are_harmless(clean_env: None, udp_receiver: DatagramReceiver) -> None:
    client = Client(url=udp_receiver.url)  # type: ignore[attr-defined]
    client.increment("parent.before")
    client.pre_fork()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never raise
        ok = False
        try:
            client.post_fork_child()
            client.increment("child")
            ok = client.flush(timeout=10) and client.statistics().recorded == 1
        finally:
            os._exit(0 if ok else 1)
    client.post_fork_parent()
    client.increment("parent.after")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(timeout=10)
    counts = udp_receiver.take().counts
    assert (counts[("parent.before", ())], counts[("child", ())]) == (1, 1)
    assert counts[("parent.after", ())] == 1
    client.close()
