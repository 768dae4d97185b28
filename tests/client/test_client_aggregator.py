"""The client's aggregator on its own: the reservoir keeps a uniform sample."""

from __future__ import annotations

import math

import pytest

from conveyor.client._aggregator import Aggregator

KEY = ("latency", ("env:test",))


def _kept(aggregator: Aggregator) -> tuple[list[float], float, int]:
    (line,) = list(aggregator.drain())
    return [float(v) for v in line.values], line.sample_rate, line.items


@pytest.mark.parametrize("kept", [1, 10])
def test_the_reservoir_is_uniform_over_the_interval(kept: int) -> None:
    # 1,000 values per interval, `kept` of them kept: every tenth of the stream must
    # be kept as often as any other. A reservoir that stops replacing (the first
    # values win) or replaces too eagerly (the last values win) fails this.
    values, trials, buckets = 1000, 3000, 10
    hits = [0] * buckets
    aggregator = Aggregator(kept, 100)
    add = aggregator.adders["h"]
    for _ in range(trials):
        for v in range(values):
            assert add("h", KEY, v, 1.0)
        samples, rate, items = _kept(aggregator)
        assert len(samples) == kept and len(set(samples)) == kept
        assert items == values and rate == pytest.approx(kept / values)
        for sample in samples:
            hits[int(sample) * buckets // values] += 1
    expected = trials * kept / buckets
    spread = math.sqrt(expected)  # about a Poisson count's standard deviation
    assert all(abs(h - expected) < 5 * spread for h in hits), (hits, expected)


def test_a_reservoir_that_is_never_full_keeps_everything() -> None:
    aggregator = Aggregator(64, 100)
    for v in range(40):
        aggregator.adders["d"]("d", KEY, v, 0.5)
    samples, rate, items = _kept(aggregator)
    assert samples == [float(v) for v in range(40)]
    assert items == 40 and rate == pytest.approx(0.5)  # 40 kept of 80 counted


def test_types_and_contexts_are_separate_and_bounded() -> None:
    aggregator = Aggregator(4, 3)
    adders = aggregator.adders
    assert adders["h"]("h", KEY, 1.0, 1.0)
    assert adders["ms"]("ms", KEY, 2.0, 1.0)
    assert adders["g"]("g", KEY, 3.0, 1.0)
    assert not adders["d"]("d", KEY, 4.0, 1.0)  # a fourth context: refused
    assert adders["h"]("h", KEY, 5.0, 1.0)  # a known one still folds
    lines = {(line.type, line.values) for line in aggregator.drain()}
    assert lines == {("h", (1.0, 5.0)), ("ms", (2.0,)), ("g", (3.0,))}
