"""Property: whatever sequence of calls is made, what reaches the socket folds to what
a simple model of the calls says (aggregation on and off)."""

from __future__ import annotations

import socket
from collections import Counter, defaultdict
from typing import Any

import pytest
from conftest import DatagramReceiver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.client import Client

NAMES = st.sampled_from(["a", "b.c", "d_e"])
TAGS = st.lists(st.sampled_from(["x:1", "y:2", "bare"]), unique=True, max_size=2).map(
    lambda tags: tuple(sorted(tags))
)
CALL = st.one_of(
    st.tuples(st.just("increment"), NAMES, st.just(1), TAGS),
    st.tuples(st.just("count"), NAMES, st.integers(-1000, 1000), TAGS),
    st.tuples(st.just("gauge"), NAMES, st.integers(-(10**6), 10**6), TAGS),
    st.tuples(st.just("set"), NAMES, st.sampled_from(["u1", "u2", "u3", "7"]), TAGS),
    st.tuples(st.just("histogram"), NAMES, st.integers(0, 10**4), TAGS),
    st.tuples(st.just("distribution"), NAMES, st.floats(0, 1e6, allow_nan=False), TAGS),
)


@pytest.mark.timeout(120)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=st.lists(CALL, max_size=200), aggregate=st.booleans())
def test_what_arrives_is_what_was_recorded(calls: list[tuple[Any, ...]], aggregate: bool) -> None:
    receiver = DatagramReceiver(socket.AF_INET, ("127.0.0.1", 0))
    port = receiver.sock.getsockname()[1]
    client = Client(url=f"udp://127.0.0.1:{port}", aggregate=aggregate, max_samples_per_context=500)
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    gauges: dict[tuple[str, tuple[str, ...]], float] = {}
    sets: dict[tuple[str, tuple[str, ...]], set[str]] = defaultdict(set)
    samples: dict[tuple[str, str, tuple[str, ...]], list[float]] = defaultdict(list)
    for method, name, value, tags in calls:
        getattr(client, method)(name, value, tags=list(tags))
        key = (name, tags)
        if method in ("increment", "count"):
            counts[key] += value
        elif method == "gauge":
            gauges[key] = value
        elif method == "set":
            sets[key].add(value)
        else:
            samples[("h" if method == "histogram" else "d", name, tags)].append(float(value))
    try:
        assert client.flush(timeout=10)
        received = receiver.take()
        assert received.bad_lines == 0
        nonzero = {k: v for k, v in received.counts.items() if v}
        assert nonzero == {k: v for k, v in counts.items() if v}
        assert received.gauges == gauges
        assert received.sets == sets
        assert {k: sorted(v) for k, v in received.samples.items()} == {
            k: sorted(v) for k, v in samples.items()
        }
        stats = client.statistics()
        assert stats.recorded == len(calls) == stats.sent
        assert stats.dropped_total == 0 and stats.pending == 0
    finally:
        client.close()
        receiver.close()
