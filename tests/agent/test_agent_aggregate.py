"""The agent's aggregator and its mergeable snapshots."""

from __future__ import annotations

import math
import pickle
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.agent._aggregate import Aggregator, telemetry_series
from conveyor.agent._series import Series, Snapshot, quantile_of_sorted, stat_name
from conveyor.agent._sketch import RELATIVE_ACCURACY
from conveyor.protocol import Event, Metric, MetricType, ParseResult, ServiceCheck, parse_packet


def _result(*metrics: Metric) -> ParseResult:
    return ParseResult(metrics=list(metrics))


def _aggregate(results: list[ParseResult], **options: object) -> Snapshot:
    aggregator = Aggregator(**options)  # type: ignore[arg-type]
    for result in results:
        aggregator.ingest(result)
    return aggregator.flush(10.0, 1000.0)


def _user(snapshot: Snapshot) -> dict[tuple[str, str, tuple[str, ...]], Series]:
    return {s.key: s for s in snapshot.series if not s.name.startswith("conveyor.agent.")}


rates = st.sampled_from([1.0, 0.5, 0.25, 0.1])
small = st.integers(min_value=-1000, max_value=1000).map(float)
tag_sets = st.lists(st.sampled_from(["a:1", "b:2", "c"]), max_size=3, unique=True).map(tuple)
names = st.sampled_from(["m1", "m2"])


@st.composite
def metrics(draw: st.DrawFn) -> Metric:
    types: list[MetricType] = ["c", "g", "s", "h", "ms", "d"]
    mtype = draw(st.sampled_from(types))
    name = draw(names)
    tags = draw(tag_sets)
    if mtype == "s":
        return Metric(name, "s", (), 1.0, tags, set_value=draw(st.sampled_from("uvwxyz")))
    values = tuple(draw(st.lists(small, min_size=1, max_size=4)))
    rate = draw(rates) if mtype != "g" else 1.0
    return Metric(name, mtype, values, rate, tags)


packets = st.lists(st.lists(metrics(), max_size=8).map(lambda m: _result(*m)), max_size=8)


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(packets)
def test_agent_counts_apply_sample_rates(results: list[ParseResult]) -> None:
    snapshot = _aggregate(results)
    expected: dict[tuple[str, tuple[str, ...]], float] = {}
    counts: dict[tuple[str, str, tuple[str, ...]], float] = {}
    for result in results:
        for m in result.metrics:
            tags = tuple(sorted(m.tags))
            if m.type == "c":
                expected[(m.name, tags)] = expected.get((m.name, tags), 0.0) + sum(
                    v / m.sample_rate for v in m.values
                )
            elif m.type in ("h", "ms", "d"):
                key = (m.type, m.name, tags)
                counts[key] = counts.get(key, 0.0) + len(m.values) / m.sample_rate
    for (name, tags), total in expected.items():
        series = snapshot.find(name, tags, "counter")
        assert series is not None
        assert series.value == pytest.approx(total)
        assert series.rate == pytest.approx(total / 10.0)
    kinds = {"h": "histogram", "ms": "timing", "d": "distribution"}
    for (mtype, name, tags), count in counts.items():
        series = snapshot.find(name, tags, kinds[mtype])  # type: ignore[arg-type]
        assert series is not None
        assert series.value == pytest.approx(count)
        assert series.stat("count") == pytest.approx(count)


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(packets, st.integers(min_value=1, max_value=4))
def test_agent_merge_of_snapshots_equals_aggregate_of_union(
    results: list[ParseResult], parts: int
) -> None:
    # Each packet goes to one of `parts` aggregators (as SO_REUSEPORT would spread
    # them); gauges are stamped by a shared increasing clock so "latest" is defined.
    ticks = iter(range(1, 10**6))

    def clock() -> float:
        return float(next(ticks))

    whole = Aggregator(clock=clock)
    ticks_copy = iter(range(1, 10**6))
    shards = [Aggregator(clock=lambda: float(next(ticks_copy))) for _ in range(parts)]
    for i, result in enumerate(results):
        whole.ingest(result)
        shards[i % parts].ingest(result)
    expected = _user(whole.flush(10.0, 1000.0))
    snapshots = [shard.flush(10.0, 1000.0) for shard in shards]
    snapshots = [pickle.loads(pickle.dumps(s)) for s in snapshots]  # as through a pipe
    merged = _user(snapshots[0].merge(snapshots[1:]))
    assert merged.keys() == expected.keys()
    for key, want in expected.items():
        got = merged[key]
        assert got.value == pytest.approx(want.value), key
        assert got.rate == pytest.approx(want.rate), key
        assert got.members == want.members
        for (stat, a), (stat_b, b) in zip(got.stats, want.stats, strict=True):
            assert stat == stat_b
            assert a == pytest.approx(b), (key, stat)


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=300))
def test_agent_histogram_percentiles_match_sorted_oracle(values: list[float]) -> None:
    percentiles = (0.5, 0.75, 0.9, 0.95, 0.99)
    snapshot = _aggregate([_result(Metric("lat", "ms", tuple(values)))], percentiles=percentiles)
    series = snapshot.find("lat", kind="timing")
    assert series is not None
    ordered = sorted(values)
    n = len(ordered)
    for q in percentiles:
        got = series.stat(stat_name(q))
        assert got is not None
        assert got == quantile_of_sorted(ordered, q)
        if q == 0.5:
            middle = ordered[(n - 1) // 2 : n // 2 + 1]  # one value, or the middle two
            assert got == sum(middle) / len(middle)
            continue
        # Oracle, etsy statsd's upper_<pct>: a received value with at least q * n values
        # at or below it, as few as rounding q * n half up allows (at least one).
        rank = max(1, math.floor(q * n + 0.5))
        assert got == ordered[rank - 1]
        assert got in values
    assert series.stat("min") == ordered[0]
    assert series.stat("max") == ordered[-1]
    assert series.stat("count") == n
    assert series.stat("avg") == pytest.approx(sum(values) / n, rel=1e-6, abs=1e-6)


def test_agent_median_of_even_count_is_mean_of_middle_two() -> None:
    series = _aggregate([parse_packet(b"t:1:2:3:10|h")]).find("t")
    assert series is not None
    assert series.stat("median") == 2.5
    assert series.stats[:5] == (
        ("count", 4.0),
        ("sum", 16.0),
        ("min", 1.0),
        ("max", 10.0),
        ("avg", 4.0),
    )


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=1e-3, max_value=1e9),
            st.floats(min_value=-1e9, max_value=-1e-3),
        ),
        min_size=1,
        max_size=400,
    )
)
def test_agent_distribution_sketch_has_bounded_relative_error(values: list[float]) -> None:
    snapshot = _aggregate([_result(Metric("d", "d", tuple(values)))])
    series = snapshot.find("d", kind="distribution")
    assert series is not None
    ordered = sorted(values)
    for q in snapshot.percentiles:
        # DDSketch reports the value at rank floor(q * (n - 1)), within its accuracy.
        truth = ordered[math.floor(q * (len(ordered) - 1))]
        got = series.stat(stat_name(q))
        assert got is not None
        assert abs(got - truth) <= RELATIVE_ACCURACY * abs(truth) * (1 + 1e-9)
    assert series.stat("count") == len(values)
    assert series.stat("min") == ordered[0]
    assert series.stat("max") == ordered[-1]


def test_agent_distribution_counts_weighted_and_sketches_merge() -> None:
    a, b = Aggregator(), Aggregator()
    a.ingest(parse_packet(b"d:1:2:3|d|@0.5"))
    b.ingest(parse_packet(b"d:100|d"))
    merged = a.flush(10, 1).merge([b.flush(10, 2)])
    series = merged.find("d")
    assert series is not None
    assert series.value == 7.0  # 3 values at 1/2 + 1 value
    assert series.stat("max") == 100.0
    assert series.observations == 4
    assert merged.timestamp == 2


def test_agent_gauges_last_value_and_merge_takes_latest() -> None:
    a = Aggregator(clock=lambda: 5.0)
    b = Aggregator(clock=lambda: 7.0)
    a.ingest(parse_packet(b"g:1|g\ng:2|g"))
    b.ingest(parse_packet(b"g:-3|g"))
    sa, sb = a.flush(10, 1), b.flush(10, 1)
    assert sa.find("g").value == 2.0  # type: ignore[union-attr]
    assert sb.find("g").value == -3.0  # type: ignore[union-attr]  # DogStatsD: a sign is a sign
    assert sb.merge([sa]).find("g").value == -3.0  # type: ignore[union-attr]
    assert sa.merge([sb]).find("g").value == -3.0  # type: ignore[union-attr]


def test_agent_statsd_dialect_gauge_deltas_persist_across_intervals() -> None:
    agg = Aggregator(statsd_dialect=True)
    agg.ingest(parse_packet(b"g:10|g\ng:+5|g", statsd_dialect=True))
    assert agg.flush(10, 1).find("g").value == 15.0  # type: ignore[union-attr]
    agg.ingest(parse_packet(b"g:-3|g", statsd_dialect=True))
    assert agg.flush(10, 2).find("g").value == 12.0  # type: ignore[union-attr]
    assert agg.flush(10, 3).find("g") is None  # only touched gauges are reported
    agg.ingest(parse_packet(b"g:+1|g", statsd_dialect=True))
    assert agg.flush(10, 4).find("g").value == 13.0  # type: ignore[union-attr]
    # Without the dialect nothing persists between intervals.
    plain = Aggregator()
    plain.ingest(_result(Metric("g", "g", (10.0,))))
    plain.flush(10, 1)
    plain.ingest(_result(Metric("g", "g", (2.0,), delta=True)))
    assert plain.flush(10, 2).find("g").value == 2.0  # type: ignore[union-attr]


def test_agent_sets_count_distinct_and_merge_by_union() -> None:
    a, b = Aggregator(), Aggregator()
    a.ingest(parse_packet(b"u:alice|s\nu:bob|s\nu:alice|s"))
    b.ingest(parse_packet(b"u:bob|s\nu:carol|s"))
    sa = a.flush(10, 1)
    assert sa.find("u").value == 2  # type: ignore[union-attr]
    merged = sa.merge([b.flush(10, 1)]).find("u")
    assert merged is not None
    assert merged.value == 3
    assert merged.members == {"alice", "bob", "carol"}


def test_agent_contexts_are_type_name_and_sorted_tags() -> None:
    snapshot = _aggregate([parse_packet(b"a:1|c|#x,y:1\na:2|c|#y:1,x\na:5|g|#x,y:1")])
    assert snapshot.find("a", ["y:1", "x"], "counter").value == 3  # type: ignore[union-attr]
    assert snapshot.find("a", ["x", "y:1"], "gauge").value == 5  # type: ignore[union-attr]


def test_agent_flush_starts_afresh() -> None:
    agg = Aggregator()
    agg.ingest(parse_packet(b"a:1|c\nb:1|h\nc:1|d\nd:x|s\ne:1|g"))
    assert len(_user(agg.flush(10, 1))) == 5
    assert _user(agg.flush(10, 2)) == {}


@pytest.mark.timeout(60)
def test_agent_context_bound_drops_and_counts_under_tag_explosion() -> None:
    agg = Aggregator(max_contexts=1000)
    tracemalloc.start()
    try:
        for batch in range(100):
            lines = (
                b"\n".join(b"req:1|c|#user:%d" % (batch * 100 + i) for i in range(100))
                + b"\nreq.lat:1:2|h|#user:%d" % batch
            )
            agg.ingest(parse_packet(lines))
        _, peak_full = tracemalloc.get_traced_memory()
        stats = agg.statistics()
        snapshot = agg.flush(10, 1)
    finally:
        tracemalloc.stop()
    assert stats.contexts == 1000
    assert stats.metrics_dropped == {"max_contexts": 10_100 - 1000}
    assert len(_user(snapshot)) == 1000
    dropped = snapshot.find("conveyor.agent.metrics_dropped", ["reason:max_contexts"])
    assert dropped is not None
    assert dropped.value == 9100
    contexts = snapshot.find("conveyor.agent.contexts")
    assert contexts is not None
    assert contexts.value == 1000
    # 10x the contexts offered did not take 10x the memory: a few MB at most.
    assert peak_full < 8 * 1024 * 1024
    # The bound is per interval: the next interval has room again.
    agg.ingest(parse_packet(b"fresh:1|c"))
    assert agg.flush(10, 2).find("fresh") is not None


def test_agent_histogram_samples_are_bounded_but_stats_exact() -> None:
    agg = Aggregator(max_samples=100)
    values = list(range(10_000))
    for start in range(0, 10_000, 50):
        agg.ingest(_result(Metric("h", "h", tuple(float(v) for v in values[start : start + 50]))))
    series = agg.flush(10, 1).find("h")
    assert series is not None
    assert len(series.samples) == 100
    assert series.observations == 10_000
    assert (series.stat("count"), series.stat("min"), series.stat("max")) == (10_000, 0, 9999)
    assert series.stat("sum") == sum(values)
    # A uniform sample of 100 puts the median well inside the middle half.
    assert 2500 < (series.stat("median") or 0) < 7500
    merged = series_snapshot(series).merge([series_snapshot(series)])
    again = merged.find("h")
    assert again is not None
    assert len(again.samples) == 100
    assert again.stat("count") == 20_000


def series_snapshot(series: Series) -> Snapshot:
    return Snapshot(timestamp=1, interval=10, series=(series,), max_samples=100)


def test_agent_events_and_service_checks_pass_through_bounded() -> None:
    agg = Aggregator(max_events=3)
    events = [Event(f"t{i}", "x") for i in range(5)]
    checks = [ServiceCheck("db", 0)]
    agg.ingest(ParseResult(events=events, service_checks=checks))
    snapshot = agg.flush(10, 1)
    assert snapshot.events == tuple(events[:3])
    assert snapshot.service_checks == tuple(checks)
    assert snapshot.events_dropped == 2
    assert agg.statistics().events_dropped == 2
    merged = snapshot.merge([snapshot])
    assert len(merged.events) == 3
    assert merged.events_dropped == 2 + 2 + 3


def test_agent_telemetry_series_count_per_interval() -> None:
    agg = Aggregator(telemetry_tags=["worker:1"])
    agg.ingest(parse_packet(b"a:1|c\nbad line\n_e{1,1}:a|b"))
    agg.ingest(parse_packet(b"b:1:2:3|d"))
    first = agg.flush(10, 1)

    def value(snapshot: Snapshot, name: str, *tags: str) -> float:
        series = snapshot.find("conveyor.agent." + name, ["worker:1", *tags])
        assert series is not None, name
        return series.value

    assert value(first, "packets") == 2
    assert value(first, "lines") == 4
    assert value(first, "metrics") == 2
    assert value(first, "values") == 4
    assert value(first, "events") == 1
    assert value(first, "parse_errors", "reason:malformed") == 1
    assert value(first, "contexts") == 2
    assert value(first, "flush.duration") >= 0
    agg.ingest(parse_packet(b"a:1|c"))
    second = agg.flush(10, 2)
    assert value(second, "packets") == 1
    assert value(second, "parse_errors", "reason:malformed") == 0
    stats = agg.statistics()
    assert (stats.packets, stats.flushes, stats.parse_errors) == (3, 2, {"malformed": 1})
    # The helper works on any two statistics.
    assert telemetry_series(stats, stats, interval=10, now=0)[0].value == 0


def test_agent_snapshot_pickles_with_sketches() -> None:
    agg = Aggregator()
    agg.ingest(parse_packet(b"d:1:2:3|d\nu:a|s\nh:4|h\n_sc|x|1"))
    snapshot = agg.flush(10, 1)
    copy = pickle.loads(pickle.dumps(snapshot))
    assert copy == snapshot  # sketches are compared through their statistics
    dist = copy.find("d")
    assert dist is not None
    assert dist.sketch is not None
    assert dist.sketch.count == 3


def test_agent_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="percentiles"):
        Aggregator(percentiles=(0.5, 1.0))
    with pytest.raises(ValueError, match="max_contexts"):
        Aggregator(max_contexts=0)


def test_agent_percentile_names() -> None:
    assert [stat_name(q) for q in (0.5, 0.95, 0.99, 0.999, 0.9)] == [
        "median",
        "p95",
        "p99",
        "p99_9",
        "p90",
    ]


@pytest.mark.timeout(10)
def test_a_distribution_value_near_the_largest_double_does_not_break_the_flush() -> None:
    """Found by bench/agent/ingest.py's author: ddsketch overflowed turning the bucket
    of 1.79e308 back into a value, and the flush raised (the ingest thread died)."""
    agg = Aggregator()
    agg.ingest(parse_packet(b"a:1.7929406717919544e+308|d\nok:1|c"))
    snapshot = agg.flush(10.0, 1.0)
    series = snapshot.find("a", kind="distribution")
    assert series is not None and series.stat("p99") == 1.7929406717919544e308
    assert snapshot.find("ok", kind="counter") is not None
