"""The agent's aggregator: parsed packets in, one :class:`Snapshot` per flush interval out.

A context is (type, name, sorted tags): ``a:1|c|#x,y`` and ``a:1|c|#y,x`` are the same
counter, ``a:1|c`` and ``a:1|g`` are two contexts. Per context and interval:

=============  ===================================================================
counter ``c``  sum of ``value / sample_rate``; rate = sum / interval
gauge ``g``    the last value received (plain StatsD deltas: see below)
set ``s``      distinct members (kept, so that worker snapshots can be unioned)
``h``, ``ms``  count (each value weighted ``1 / sample_rate``), sum, min, max, avg
               exactly; median, p95, p99 (configurable) from the values received,
               all of them up to ``max_samples`` per context, a uniform sample after
``d``          a DDSketch (bounded relative error, mergeable): count, sum, min, max
               exactly, percentiles within 1/128 of the true value
=============  ===================================================================

Percentiles of histograms are computed from the values as received, not weighted by
their sample rates (the count is weighted). ``|T`` timestamps are ignored: every
sample is aggregated into the interval it arrives in.

Gauge deltas. With ``statsd_dialect=True`` (the server parses with the same flag), a
gauge line whose values carry a sign changes the gauge instead of setting it, as etsy
statsd does; the value a delta applies to persists across intervals (starting from 0),
in a table bounded by ``max_contexts`` that forgets the least recently updated gauge
first. Without the dialect nothing persists: a delta (only a hand-built Metric can carry
one) applies to the value received earlier in the same interval, or to 0. Across
``--workers`` processes each worker has its own table: a client whose packets reach two
workers sees its deltas applied twice over (one source address and port always reach
the same worker with SO_REUSEPORT).

Bounds. At most ``max_contexts`` contexts per interval: a sample for a new context past
that is dropped and counted (reason ``max_contexts``), so memory stays bounded under a
tag explosion; at most ``max_samples`` values per histogram or timing context and a
sketch of at most 2048 buckets per distribution; at most ``max_events`` events and as
many service checks per interval, the rest counted in ``events_dropped``. Worst case,
the histograms hold ``max_contexts * max_samples`` floats (about 8 bytes each): lower
one of them for a small machine.

Threading: single-threaded. The server calls :meth:`Aggregator.ingest` and
:meth:`Aggregator.flush` from one thread (its aggregation thread); nothing here takes
a lock. :meth:`Aggregator.statistics` returns a frozen snapshot of counters and may be
read from another thread (it only reads ints under the GIL).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from conveyor._ratelimit import RateLimitedLog
from conveyor.protocol import Event, ParseResult, ServiceCheck

from ._series import (
    DEFAULT_PERCENTILES,
    KIND_OF_TYPE,
    Series,
    Snapshot,
    distribution_series,
    histogram_series,
)
from ._sketch import new_sketch

if TYPE_CHECKING:
    from ddsketch.ddsketch import BaseDDSketch

log = logging.getLogger("conveyor.agent")

Key = tuple[str, str, tuple[str, ...]]  # (wire type, name, sorted tags)
_T = TypeVar("_T")

TELEMETRY_PREFIX = "conveyor.agent."

DROP_REASONS = ("max_contexts", "no_value")
"""Why :meth:`Aggregator.ingest` drops a metric: its context would exceed
``max_contexts``; a set line without a member (a hand-built Metric)."""


class _Sampled:
    """A histogram's or timing's interval: exact count/sum/min/max, kept values."""

    __slots__ = ("count", "high", "low", "observations", "samples", "total")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.observations = 0
        self.count = 0.0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf


class _Distribution:
    __slots__ = ("observations", "sketch")

    def __init__(self) -> None:
        self.sketch: BaseDDSketch = new_sketch()
        self.observations = 0


@dataclass(frozen=True)
class AggregatorStatistics:
    """Counters since the aggregator was made (a frozen snapshot).

    ``packets`` is the number of :meth:`Aggregator.ingest` calls; ``lines`` every line
    they held, good or bad; ``parse_errors`` the bad lines by reason (the parser's
    keys); ``metrics_dropped`` the metric lines refused, by reason (:data:`DROP_REASONS`);
    ``events_dropped`` the events and service checks past ``max_events``; ``contexts``
    the contexts of the current interval, ``flushed_contexts`` those of the last
    flushed one; ``flushes`` and ``last_flush_duration``
    (seconds, the aggregation part of the last flush).
    """

    packets: int = 0
    lines: int = 0
    metrics: int = 0
    values: int = 0
    events: int = 0
    service_checks: int = 0
    parse_errors: Mapping[str, int] = field(default_factory=dict)
    metrics_dropped: Mapping[str, int] = field(default_factory=dict)
    events_dropped: int = 0
    contexts: int = 0
    flushed_contexts: int = 0
    max_contexts: int = 0
    flushes: int = 0
    last_flush_duration: float = 0.0


class Aggregator:
    """Folds parsed packets per context until :meth:`flush` hands out a :class:`Snapshot`.

    Args:
        percentiles: quantiles in (0, 1) reported for histograms, timings and
            distributions (0.5 is reported as ``median``, 0.95 as ``p95``).
        max_contexts: contexts per interval; past it new contexts are dropped.
        statsd_dialect: apply gauge deltas to a value that persists across intervals.
        max_samples: values kept per histogram/timing context per interval.
        max_events: events, and service checks, kept per interval.
        telemetry_tags: tags on the ``conveyor.agent.*`` series (``worker:2``), so
            that the telemetry of merged workers stays apart.
        clock: unix time, read once per :meth:`ingest` to stamp gauges (a merge keeps
            the gauge received last).
    """

    def __init__(
        self,
        *,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        max_contexts: int = 100_000,
        statsd_dialect: bool = False,
        max_samples: int = 1000,
        max_events: int = 1000,
        telemetry_tags: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        percentiles = tuple(float(q) for q in percentiles)
        if not all(0.0 < q < 1.0 for q in percentiles):
            raise ValueError(f"percentiles must lie strictly between 0 and 1, got {percentiles}")
        for name, bound in (
            ("max_contexts", max_contexts),
            ("max_samples", max_samples),
            ("max_events", max_events),
        ):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise ValueError(f"{name} must be a positive int, got {bound!r}")
        self._percentiles = percentiles
        self._max_contexts = max_contexts
        self._max_samples = max_samples
        self._max_events = max_events
        self._dialect = statsd_dialect
        self._telemetry_tags = tuple(sorted(telemetry_tags))
        self._clock = clock
        self._random = random.Random()
        self._log = RateLimitedLog(log)
        self._new_interval()
        # Dialect gauges: the value deltas apply to, across intervals (LRU order).
        self._gauge_memory: dict[Key, float] = {}
        # Cumulative counters (statistics()).
        self._packets = 0
        self._lines = 0
        self._metrics = 0
        self._values = 0
        self._events_in = 0
        self._checks_in = 0
        self._parse_errors: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._events_dropped = 0
        self._flushes = 0
        self._flushed_contexts = 0
        self._last_flush_duration = 0.0
        self._reported = AggregatorStatistics()

    def _new_interval(self) -> None:
        self._counters: dict[Key, float] = {}
        self._gauges: dict[Key, tuple[float, float]] = {}  # value, receive time
        self._sets: dict[Key, set[str]] = {}
        self._sampled: dict[Key, _Sampled] = {}
        self._distributions: dict[Key, _Distribution] = {}
        self._events: list[Event] = []
        self._checks: list[ServiceCheck] = []
        self._interval_events_dropped = 0
        self._contexts = 0

    @property
    def percentiles(self) -> tuple[float, ...]:
        return self._percentiles

    def _refuse(self, reason: str) -> None:
        self._dropped[reason] += 1
        if reason == "max_contexts":
            self._log.warning(
                reason,
                "conveyor agent: more than %d contexts in this interval; new contexts are"
                " dropped until the next flush (raise max_contexts, or look for a tag"
                " with unbounded values)",
                self._max_contexts,
            )

    def ingest(self, result: ParseResult) -> None:
        """Fold one parsed packet into the current interval (single-threaded)."""
        self._packets += 1
        metrics = result.metrics
        self._metrics += len(metrics)
        self._lines += len(metrics) + len(result.events) + len(result.service_checks)
        if result.errors:
            bad = sum(result.errors.values())
            self._lines += bad
            self._parse_errors.update(result.errors)
            self._log.warning(
                "parse", "conveyor agent: skipped %d bad line(s): %s", bad, dict(result.errors)
            )
        now = self._clock()
        # The hot loop: locals rather than attributes, one tuple unpacking per metric
        # rather than an attribute read per field, counters and timings first.
        counters = self._counters
        sampled_contexts = self._sampled
        max_contexts = self._max_contexts
        max_samples = self._max_samples
        random = self._random.random
        contexts = self._contexts
        values_seen = 0
        try:
            for name, mtype, values, rate, tags_as_sent, _, _, member, delta in metrics:
                tags = tags_as_sent if len(tags_as_sent) < 2 else tuple(sorted(tags_as_sent))
                key: Key = (mtype, name, tags)
                values_seen += len(values) or 1
                if mtype == "c":
                    total = counters.get(key)
                    if total is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        total = 0.0
                        contexts += 1
                    for value in values:
                        total += value / rate
                    counters[key] = total
                elif mtype in {"ms", "h"}:
                    sampled = sampled_contexts.get(key)
                    if sampled is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        contexts += 1
                        sampled = sampled_contexts[key] = _Sampled()
                    if len(values) == 1:
                        # _add_samples inline for the usual case: one value.
                        value = values[0]
                        weight = 1.0 / rate
                        sampled.observations += 1
                        sampled.count += weight
                        sampled.total += value * weight
                        if value < sampled.low:
                            sampled.low = value
                        if value > sampled.high:
                            sampled.high = value
                        samples = sampled.samples
                        if len(samples) < max_samples:
                            samples.append(value)
                        else:
                            slot = int(random() * sampled.observations)
                            if slot < max_samples:
                                samples[slot] = value
                    else:
                        self._add_samples(sampled, values, rate)
                elif mtype == "g":
                    gauges = self._gauges
                    entry = gauges.get(key)
                    if entry is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        contexts += 1
                    if delta:
                        if self._dialect:
                            current = self._gauge_memory.pop(key, 0.0)
                        else:
                            current = entry[0] if entry is not None else 0.0
                        for value in values:
                            current += value
                    else:
                        current = values[-1]
                    if self._dialect:
                        self._remember(key, current)
                    gauges[key] = (current, now)
                elif mtype == "s":
                    if member is None:
                        self._refuse("no_value")
                        continue
                    members = self._sets.get(key)
                    if members is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        contexts += 1
                        members = self._sets[key] = set()
                    members.add(member)
                elif mtype == "d":
                    dist = self._distributions.get(key)
                    if dist is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        contexts += 1
                        dist = self._distributions[key] = _Distribution()
                    weight = 1.0 / rate
                    add = dist.sketch.add
                    for value in values:
                        add(value, weight)
                    dist.observations += len(values)
                else:  # a hand-built Metric of another type: as a histogram
                    sampled = sampled_contexts.get(key)
                    if sampled is None:
                        if contexts >= max_contexts:
                            self._refuse("max_contexts")
                            continue
                        contexts += 1
                        sampled = sampled_contexts[key] = _Sampled()
                    self._add_samples(sampled, values, rate)
        finally:
            self._contexts = contexts
            self._values += values_seen
        if result.events or result.service_checks:
            self._events_in += len(result.events)
            self._checks_in += len(result.service_checks)
            self._keep(self._events, result.events)
            self._keep(self._checks, result.service_checks)

    def _add_samples(self, sampled: _Sampled, values: tuple[float, ...], rate: float) -> None:
        weight = 1.0 / rate
        samples = sampled.samples
        limit = self._max_samples
        for value in values:
            sampled.observations += 1
            sampled.count += weight
            sampled.total += value * weight
            if value < sampled.low:
                sampled.low = value
            if value > sampled.high:
                sampled.high = value
            if len(samples) < limit:
                samples.append(value)
            else:
                # Algorithm R: every value seen so far stays with equal probability.
                slot = int(self._random.random() * sampled.observations)
                if slot < limit:
                    samples[slot] = value

    def _remember(self, key: Key, value: float) -> None:
        memory = self._gauge_memory
        memory.pop(key, None)
        if len(memory) >= self._max_contexts:
            del memory[next(iter(memory))]  # the least recently updated
        memory[key] = value

    def _keep(self, kept: list[_T], received: Sequence[_T]) -> None:
        room = self._max_events - len(kept)
        if room >= len(received):
            kept.extend(received)
            return
        kept.extend(received[: max(room, 0)])
        lost = len(received) - max(room, 0)
        self._interval_events_dropped += lost
        self._events_dropped += lost
        self._log.warning(
            "events",
            "conveyor agent: more than %d events or service checks in this interval;"
            " the rest are dropped until the next flush",
            self._max_events,
        )

    def flush(self, interval: float, now: float, *, telemetry: Iterable[Series] = ()) -> Snapshot:
        """Everything aggregated since the last flush, as a :class:`Snapshot`; the next
        interval starts empty (only dialect gauges' values persist).

        ``interval`` is the interval's length in seconds (rates are per second over
        it), ``now`` the flush time in unix seconds. The snapshot ends with the agent's
        own ``conveyor.agent.*`` series (see :func:`telemetry_series`) and then
        ``telemetry``, series the caller adds (its listeners' counters, say).
        """
        started = time.perf_counter()
        percentiles = self._percentiles
        per_second = 1.0 / interval if interval > 0 else 0.0
        series: list[Series] = []
        append = series.append
        for (_, name, tags), total in self._counters.items():
            append(Series(name, "counter", tags, total, rate=total * per_second))
        for (_, name, tags), (value, received) in self._gauges.items():
            append(Series(name, "gauge", tags, value, received=received))
        for (_, name, tags), members in self._sets.items():
            append(Series(name, "set", tags, float(len(members)), members=frozenset(members)))
        for (mtype, name, tags), sampled in self._sampled.items():
            append(
                histogram_series(
                    KIND_OF_TYPE[mtype],
                    name,
                    tags,
                    samples=sampled.samples,
                    observations=sampled.observations,
                    count=sampled.count,
                    total=sampled.total,
                    low=sampled.low,
                    high=sampled.high,
                    interval=interval,
                    percentiles=percentiles,
                )
            )
        for (_, name, tags), dist in self._distributions.items():
            append(
                distribution_series(
                    name, tags, dist.sketch, dist.observations, interval, percentiles
                )
            )
        events, checks = tuple(self._events), tuple(self._checks)
        dropped = self._interval_events_dropped
        self._flushed_contexts = self._contexts
        self._new_interval()
        self._flushes += 1
        self._last_flush_duration = time.perf_counter() - started
        current = self.statistics()
        series.extend(
            telemetry_series(
                current, self._reported, interval=interval, now=now, tags=self._telemetry_tags
            )
        )
        self._reported = current
        series.extend(telemetry)
        return Snapshot(
            timestamp=now,
            interval=interval,
            series=tuple(series),
            events=events,
            service_checks=checks,
            events_dropped=dropped,
            percentiles=percentiles,
            max_samples=self._max_samples,
            max_events=self._max_events,
        )

    def statistics(self) -> AggregatorStatistics:
        """A frozen snapshot of the counters since this aggregator was made."""
        return AggregatorStatistics(
            packets=self._packets,
            lines=self._lines,
            metrics=self._metrics,
            values=self._values,
            events=self._events_in,
            service_checks=self._checks_in,
            parse_errors=dict(self._parse_errors),
            metrics_dropped=dict(self._dropped),
            events_dropped=self._events_dropped,
            contexts=self._contexts,
            flushed_contexts=self._flushed_contexts,
            max_contexts=self._max_contexts,
            flushes=self._flushes,
            last_flush_duration=self._last_flush_duration,
        )


def telemetry_series(
    current: AggregatorStatistics,
    previous: AggregatorStatistics,
    *,
    interval: float,
    now: float,
    tags: tuple[str, ...] = (),
) -> list[Series]:
    """The agent's own telemetry as series, for the interval between two statistics.

    Counters (per interval, the difference of the two snapshots):
    ``conveyor.agent.packets``, ``.lines``, ``.metrics``, ``.values``, ``.events``,
    ``.service_checks``, ``.parse_errors`` (tag ``reason:<key>``),
    ``.metrics_dropped`` (tag ``reason:<key>``), ``.events_dropped``. Gauges:
    ``.contexts`` (of the last flushed interval),
    ``.max_contexts``, ``.flush.duration`` (seconds). Reasons only appear once they
    have been counted.
    """
    per_second = 1.0 / interval if interval > 0 else 0.0
    out: list[Series] = []

    def counter(name: str, value: float, extra: tuple[str, ...] = ()) -> None:
        out.append(
            Series(
                TELEMETRY_PREFIX + name,
                "counter",
                tuple(sorted(tags + extra)),
                float(value),
                rate=value * per_second,
            )
        )

    def gauge(name: str, value: float) -> None:
        out.append(Series(TELEMETRY_PREFIX + name, "gauge", tags, float(value), received=now))

    for name in ("packets", "lines", "metrics", "values", "events", "service_checks"):
        counter(name, getattr(current, name) - getattr(previous, name))
    counter("events_dropped", current.events_dropped - previous.events_dropped)
    for family in ("parse_errors", "metrics_dropped"):
        before: Mapping[str, int] = getattr(previous, family)
        for reason, count in sorted(getattr(current, family).items()):
            counter(family, count - before.get(reason, 0), (f"reason:{reason}",))
    gauge("contexts", current.flushed_contexts)
    gauge("max_contexts", current.max_contexts)
    gauge("flush.duration", current.last_flush_duration)
    return out
