"""Client-side aggregation: one interval's worth of metrics, folded per context.

A context is (type, name, tags). Counters are summed, gauges keep their last value,
sets keep their distinct values, and histograms, distributions and timings keep a
uniform reservoir of at most ``max_samples`` values per context, sent packed
(``name:1:2:3|d``) with the sample rate that lets the agent count every recorded
value: a context that saw 1,000 values and sends 100 of them sends them at ``@0.1``.

Every context remembers how many recorded calls ("items") it folds, so the client's
books balance: each item ends up sent or dropped, never forgotten.

Only the sender thread touches an aggregator: it needs no lock.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Tags = tuple[str, ...] | None
Key = tuple[str, Tags]

SAMPLED_TYPES = ("h", "d", "ms")


@dataclass(slots=True)
class _Sampled:
    samples: list[float]
    weight: float  # recorded values, each counted 1/sample_rate times
    items: int
    # Algorithm L (Li, 1994): instead of a random draw per value, draw how many values
    # to skip before the next one replaces a kept one; the same uniform reservoir.
    next_pick: int = 0  # `items` count at which the next value is kept
    w: float = 0.0


@dataclass(slots=True)
class AggregatedLine:
    """What one context contributes to a flush."""

    type: str
    name: str
    tags: Tags
    values: tuple[float | str, ...]
    sample_rate: float
    items: int


class Aggregator:
    """Folds metric calls per context until :meth:`drain` hands them to the encoder."""

    __slots__ = (
        "_counts",
        "_gauges",
        "_increments",
        "_max_contexts",
        "_max_samples",
        "_random",
        "_sampled",
        "_sets",
        "adders",
        "contexts",
    )

    def __init__(self, max_samples: int, max_contexts: int) -> None:
        self._max_samples = max_samples
        self._max_contexts = max_contexts
        self._random = random.Random()
        self._increments: Counter[Key] = Counter()  # value-1 increments: items == sum
        self._counts: dict[Key, list[float]] = {}  # [sum, items]
        self._gauges: dict[Key, list[float]] = {}  # [value, items]
        self._sets: dict[Key, tuple[set[str], list[int]]] = {}
        self._sampled: dict[str, dict[Key, _Sampled]] = {t: {} for t in SAMPLED_TYPES}
        self.contexts = 0
        #: How to fold one call, by type: ``adders[type](type, key, value, rate)``
        #: returns False if the context table is full. ``value`` is a finite int or
        #: float, or (sets) a str or an int: the client checked it. One dict lookup
        #: and one call per item, on the sender's busiest loop.
        self.adders: dict[str, Callable[[str, Key, Any, float], bool]] = {
            "c": self._add_count,
            "g": self._add_gauge,
            "s": self._add_set,
            **dict.fromkeys(SAMPLED_TYPES, self._add_sample),
        }

    def _has_room(self) -> bool:
        return self.contexts < self._max_contexts

    def add_increments(self, increments: Counter[Key]) -> int:
        """Fold a batch of value-1 increments; return how many items were refused
        because the context table is full."""
        refused = 0
        known = self._increments
        for key, n in increments.items():
            if key in known or key in self._counts:
                known[key] += n
            elif self._has_room():
                self.contexts += 1
                known[key] += n
            else:
                refused += n
        return refused

    def _add_count(self, _type: str, key: Key, value: float, rate: float) -> bool:
        entry = self._counts.get(key)
        if entry is None:
            if key not in self._increments:
                if not self._has_room():
                    return False
                self.contexts += 1
            self._counts[key] = [value / rate, 1]
        else:
            entry[0] += value / rate
            entry[1] += 1
        return True

    def _add_gauge(self, _type: str, key: Key, value: float, _rate: float) -> bool:
        gauge = self._gauges.get(key)
        if gauge is None:
            if not self._has_room():
                return False
            self.contexts += 1
            self._gauges[key] = [value, 1]
        else:
            gauge[0] = value
            gauge[1] += 1
        return True

    def _add_set(self, _type: str, key: Key, value: str | int, _rate: float) -> bool:
        entry = self._sets.get(key)
        if entry is None:
            if not self._has_room():
                return False
            self.contexts += 1
            self._sets[key] = ({str(value)}, [1])
        else:
            entry[0].add(str(value))
            entry[1][0] += 1
        return True

    def _add_sample(self, type_: str, key: Key, value: float, rate: float) -> bool:
        by_key = self._sampled[type_]
        sampled = by_key.get(key)
        if sampled is None:
            if not self._has_room():
                return False
            self.contexts += 1
            by_key[key] = _Sampled([value], 1.0 / rate, 1)
            if self._max_samples == 1:
                self._next_pick(by_key[key])
            return True
        sampled.items += 1
        sampled.weight += 1.0 / rate
        samples = sampled.samples
        if len(samples) < self._max_samples:
            samples.append(value)
            if len(samples) == self._max_samples:
                self._next_pick(sampled)
        elif sampled.items == sampled.next_pick:
            samples[int(self._random.random() * self._max_samples)] = value
            self._next_pick(sampled)
        return True

    def _next_pick(self, sampled: _Sampled) -> None:
        """Algorithm L's step, once the reservoir is full: when the next value is kept."""
        draw = self._random.random
        k = self._max_samples
        w = math.exp(math.log(_nonzero(draw())) / k)
        if sampled.w:
            w *= sampled.w
        # Keep w inside (0, 1) whatever the rounding: log1p(-w) must be finite and < 0.
        sampled.w = w = min(max(w, 5e-324), 1.0 - 2.0**-53)
        skip = math.floor(math.log(_nonzero(draw())) / math.log1p(-w))
        sampled.next_pick = sampled.items + skip + 1

    def drain(self) -> Iterator[AggregatedLine]:
        """Yield every context once and start a new, empty interval."""
        increments, counts = self._increments, self._counts
        gauges, sets, sampled = self._gauges, self._sets, self._sampled
        self._increments = Counter()
        self._counts, self._gauges, self._sets = {}, {}, {}
        self._sampled = {t: {} for t in SAMPLED_TYPES}
        self.contexts = 0
        for key, n in increments.items():
            extra = counts.pop(key, None)
            total: float = n
            items = n
            if extra is not None:
                total += extra[0]
                items += int(extra[1])
            yield AggregatedLine("c", key[0], key[1], (_int_if_whole(total),), 1.0, items)
        for key, (total, items_f) in counts.items():
            yield AggregatedLine("c", key[0], key[1], (_int_if_whole(total),), 1.0, int(items_f))
        for key, (value, items_f) in gauges.items():
            yield AggregatedLine("g", key[0], key[1], (value,), 1.0, int(items_f))
        for key, (values, items_box) in sets.items():
            yield AggregatedLine("s", key[0], key[1], tuple(sorted(values)), 1.0, items_box[0])
        for type_, by_key in sampled.items():
            for (name, tags), entry in by_key.items():
                kept = len(entry.samples)
                rate = 1.0 if kept >= entry.weight else kept / entry.weight
                yield AggregatedLine(type_, name, tags, tuple(entry.samples), rate, entry.items)


def _nonzero(u: float) -> float:
    """``random()`` is in [0, 1); a logarithm needs (0, 1)."""
    return u if u > 0.0 else 5e-324


def _int_if_whole(value: float) -> float:
    return int(value) if value == int(value) else value
