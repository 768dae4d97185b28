"""What a flush produces: :class:`Series` and the mergeable :class:`Snapshot`.

A snapshot is the hand-over point between the aggregator and every backend, and
between ``--workers N`` processes and their parent: each worker aggregates its share
of the traffic, pickles its snapshot down a pipe, and the parent merges them into one
before the backends see it. So a series keeps whatever state a merge needs, not only
the numbers a backend prints: a set keeps its members (distinct counts do not add), a
histogram keeps its values (percentiles do not average), a distribution keeps its
sketch (which merges with the same relative-error guarantee).

Plain frozen dataclasses without ``__slots__``: they pickle on every supported
CPython (frozen slotted dataclasses could not be unpickled before 3.11).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from conveyor.protocol import Event, ServiceCheck

from ._sketch import quantile_value

if TYPE_CHECKING:
    from ddsketch.ddsketch import BaseDDSketch

Kind = Literal["counter", "gauge", "set", "histogram", "timing", "distribution"]
"""What a series aggregates: DogStatsD types ``c``, ``g``, ``s``, ``h``, ``ms``, ``d``."""

KIND_OF_TYPE: dict[str, Kind] = {
    "c": "counter",
    "g": "gauge",
    "s": "set",
    "h": "histogram",
    "ms": "timing",
    "d": "distribution",
}

SAMPLED_KINDS: frozenset[str] = frozenset(("histogram", "timing", "distribution"))

DEFAULT_PERCENTILES: tuple[float, ...] = (0.5, 0.95, 0.99)


def stat_name(quantile: float) -> str:
    """The statistic's name for a percentile: ``median`` for 0.5, else ``p95``,
    ``p99``, ``p99_9`` (no dot, so that it can end a dotted StatsD name)."""
    if quantile == 0.5:
        return "median"
    text = f"{quantile * 100:.6f}".rstrip("0").rstrip(".")
    return "p" + text.replace(".", "_")


def _round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up: JavaScript's ``Math.round``,
    which etsy statsd uses (Python's ``round`` sends halves to even)."""
    whole = math.floor(x)
    return whole + 1 if x - whole >= 0.5 else whole


def quantile_of_sorted(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of sorted ``values`` (not empty), as etsy statsd defines it.

    The median (``q == 0.5``) is the middle value, or the mean of the middle two for an
    even count. Any other percentile is the value at rank ``round(q * n)`` (1-based,
    halves rounded up, at least 1): the largest of the lowest ``q`` share of the
    values, etsy's ``upper_<pct>``. Always a value that was received, never one
    interpolated between two (the Datadog agent also picks a received value).
    """
    n = len(values)
    if q == 0.5:
        middle = n // 2
        if n % 2:
            return values[middle]
        return (values[middle - 1] + values[middle]) / 2
    rank = _round_half_up(q * n)
    return values[min(max(rank, 1), n) - 1]


@dataclass(frozen=True)
class Series:
    """One context's aggregate over one flush interval.

    ``value`` is what a one-number backend shows: a counter's sum of
    ``value / sample_rate``; a gauge's last value; a set's distinct count; the
    weighted count (each value counted ``1 / sample_rate`` times) of a histogram,
    timing or distribution. ``rate`` is ``value`` per second over the interval for
    counters and the sampled kinds (0 for gauges and sets).

    ``stats`` (sampled kinds only) are ``count``, ``sum``, ``min``, ``max``, ``avg``
    and one entry per configured percentile (``median``, ``p95``, ``p99``...); read
    one with :meth:`stat`. The rest is merge state: ``received`` (a gauge's receive
    time, unix seconds: a merge keeps the latest), ``members`` (a set's),
    ``samples`` and ``observations`` (a histogram's or timing's values: all of them,
    or a uniform sample of ``observations`` values once there were more than the
    aggregator keeps), ``sketch`` (a distribution's DDSketch; do not mutate it).
    """

    name: str
    kind: Kind
    tags: tuple[str, ...]
    value: float
    rate: float = 0.0
    stats: tuple[tuple[str, float], ...] = ()
    received: float = 0.0
    members: frozenset[str] = frozenset()
    samples: tuple[float, ...] = ()
    observations: int = 0
    sketch: BaseDDSketch | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        """The context: (kind, name, sorted tags)."""
        return (self.kind, self.name, self.tags)

    def stat(self, name: str) -> float | None:
        """A statistic by name (``"p95"``, ``"count"``...), None if absent."""
        for key, value in self.stats:
            if key == name:
                return value
        return None


def sampled_stats(
    count: float,
    total: float,
    low: float,
    high: float,
    quantile: Callable[[float], float],
    percentiles: Sequence[float],
) -> tuple[tuple[str, float], ...]:
    """The statistics of a histogram, timing or distribution, in a fixed order."""
    stats = [
        ("count", count),
        ("sum", total),
        ("min", low),
        ("max", high),
        ("avg", total / count if count else 0.0),
    ]
    stats.extend((stat_name(q), quantile(q)) for q in percentiles)
    return tuple(stats)


def histogram_series(
    kind: Kind,
    name: str,
    tags: tuple[str, ...],
    *,
    samples: Sequence[float],
    observations: int,
    count: float,
    total: float,
    low: float,
    high: float,
    interval: float,
    percentiles: Sequence[float],
) -> Series:
    """A histogram or timing series from its kept values (percentiles) and its exact
    count, sum, min and max."""
    ordered = sorted(samples)
    stats = sampled_stats(
        count, total, low, high, lambda q: quantile_of_sorted(ordered, q), percentiles
    )
    return Series(
        name,
        kind,
        tags,
        count,
        rate=count / interval if interval > 0 else 0.0,
        stats=stats,
        samples=tuple(samples),
        observations=observations,
    )


def distribution_series(
    name: str,
    tags: tuple[str, ...],
    sketch: BaseDDSketch,
    observations: int,
    interval: float,
    percentiles: Sequence[float],
) -> Series:
    """A distribution series: every statistic comes from the sketch (count, sum, min
    and max exactly; percentiles within its relative accuracy)."""
    count = float(sketch.count)

    def quantile(q: float) -> float:
        return quantile_value(sketch, q)

    stats = sampled_stats(
        count, float(sketch.sum), float(sketch._min), float(sketch._max), quantile, percentiles
    )
    return Series(
        name,
        "distribution",
        tags,
        count,
        rate=count / interval if interval > 0 else 0.0,
        stats=stats,
        observations=observations,
        sketch=sketch,
    )


@dataclass(frozen=True)
class Snapshot:
    """Everything one flush interval aggregated: series, events, service checks.

    ``timestamp`` is the flush time (unix seconds) and ``interval`` its length in
    seconds. ``events`` and ``service_checks`` are passed through as received, at most
    ``max_events`` of each; ``events_dropped`` counts the ones left out. ``percentiles``
    and ``max_samples`` say how the sampled series were computed, so that
    :meth:`merge` can compute them again.
    """

    timestamp: float
    interval: float
    series: tuple[Series, ...] = ()
    events: tuple[Event, ...] = ()
    service_checks: tuple[ServiceCheck, ...] = ()
    events_dropped: int = 0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    max_samples: int = 1000
    max_events: int = 1000

    def find(self, name: str, tags: Iterable[str] = (), kind: Kind | None = None) -> Series | None:
        """The series called ``name`` with exactly these tags (any order), or None."""
        wanted = tuple(sorted(tags))
        for series in self.series:
            if (
                series.name == name
                and series.tags == wanted
                and (kind is None or series.kind == kind)
            ):
                return series
        return None

    def merge(self, others: Iterable[Snapshot]) -> Snapshot:
        """This snapshot and ``others`` as one, as if one aggregator had seen it all.

        Counters add; gauges keep the value received last; sets take the union of
        their members; histograms and timings pool their values (a uniform sample of
        ``max_samples`` of them, drawn in proportion to each part's observations, when
        there are more) and add their counts and sums exactly; distributions merge
        their sketches. Events and service checks are concatenated up to
        ``max_events`` each. The result takes the latest timestamp and the longest
        interval; rates are recomputed over it. Nothing is mutated.
        """
        parts = [self, *others]
        interval = max(part.interval for part in parts)
        groups: dict[tuple[str, str, tuple[str, ...]], list[Series]] = {}
        for part in parts:
            for series in part.series:
                groups.setdefault(series.key, []).append(series)
        merged = tuple(
            _merge_series(group, interval, self.percentiles, self.max_samples)
            for group in groups.values()
        )
        events: list[Event] = []
        checks: list[ServiceCheck] = []
        dropped = 0
        for part in parts:
            dropped += part.events_dropped
            room = self.max_events - len(events)
            events.extend(part.events[:room])
            dropped += max(0, len(part.events) - room)
            room = self.max_events - len(checks)
            checks.extend(part.service_checks[:room])
            dropped += max(0, len(part.service_checks) - room)
        return replace(
            self,
            timestamp=max(part.timestamp for part in parts),
            interval=interval,
            series=merged,
            events=tuple(events),
            service_checks=tuple(checks),
            events_dropped=dropped,
        )


def _total(values: Iterable[float]) -> float:
    """The sum of the parts' values, correctly rounded (``math.fsum``), so that merged
    parts add up to what one aggregator would have found.

    ``fsum`` raises where plain addition overflows (values near 1e308, which clients
    may send and the parser accepts as finite) or meets ``inf - inf``; the merge must
    not (an exception there lost the whole flush of every ``--workers`` process; found
    by fuzz/agent_fuzz.py), so it then adds them plainly, to ``inf`` or ``nan`` as one
    aggregator's running sums overflow too.
    """
    parts = list(values)
    try:
        return math.fsum(parts)
    except (OverflowError, ValueError):
        return sum(parts)


def _merge_series(
    group: list[Series], interval: float, percentiles: Sequence[float], max_samples: int
) -> Series:
    first = group[0]
    per_second = 1.0 / interval if interval > 0 else 0.0
    if len(group) == 1 and first.kind in ("gauge", "set"):
        return first
    kind = first.kind
    if kind == "counter":
        total = _total(series.value for series in group)
        return replace(first, value=total, rate=total * per_second)
    if kind == "gauge":
        return max(group, key=lambda series: series.received)
    if kind == "set":
        members = frozenset().union(*(series.members for series in group))
        return replace(first, value=float(len(members)), members=members)
    if kind == "distribution":
        from ._sketch import copy_sketch

        assert first.sketch is not None
        sketch = copy_sketch(first.sketch)
        for series in group[1:]:
            if series.sketch is not None:
                sketch.merge(series.sketch)
        observations = sum(series.observations for series in group)
        return distribution_series(
            first.name, first.tags, sketch, observations, interval, percentiles
        )
    observations = sum(series.observations for series in group)
    samples: list[float] = []
    if sum(len(series.samples) for series in group) <= max_samples:
        for series in group:
            samples.extend(series.samples)
    else:
        # Each part contributes in proportion to the values it stands for.
        rng = random.Random(observations)
        for series in group:
            share = round(max_samples * series.observations / observations)
            share = min(share, len(series.samples), max_samples - len(samples))
            samples.extend(rng.sample(series.samples, share))
    return histogram_series(
        kind,
        first.name,
        first.tags,
        samples=samples,
        observations=observations,
        count=_total(series.value for series in group),
        total=_total(series.stat("sum") or 0.0 for series in group),
        low=min(series.stat("min") or 0.0 for series in group),
        high=max(series.stat("max") or 0.0 for series in group),
        interval=interval,
        percentiles=percentiles,
    )
