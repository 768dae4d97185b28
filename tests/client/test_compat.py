"""conveyor and the `datadog` package, given the same calls, send the same metrics."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import DatagramReceiver
from datadog.dogstatsd.base import DogStatsd

from conveyor.client import Client

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
