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

import random
from collections import Counter
from collections.abc import Iterator
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
        self._sampled: dict[tuple[str, str, Tags], _Sampled] = {}
        self.contexts = 0

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

    def add(self, type_: str, name: str, value: Any, tags: Tags, rate: float) -> bool:
        # `value` is a finite int or float, or (sets) a str or int: checked by the client.
        """Fold one call; False if refused because the context table is full."""
        key = (name, tags)
        if type_ == "c":
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
        elif type_ == "g":
            gauge = self._gauges.get(key)
            if gauge is None:
                if not self._has_room():
                    return False
                self.contexts += 1
                self._gauges[key] = [value, 1]
            else:
                gauge[0] = value
                gauge[1] += 1
        elif type_ == "s":
            entry_set = self._sets.get(key)
            if entry_set is None:
                if not self._has_room():
                    return False
                self.contexts += 1
                self._sets[key] = ({str(value)}, [1])
            else:
                entry_set[0].add(str(value))
                entry_set[1][0] += 1
        else:
            skey = (type_, name, tags)
            sampled = self._sampled.get(skey)
            if sampled is None:
                if not self._has_room():
                    return False
                self.contexts += 1
                self._sampled[skey] = _Sampled([value], 1.0 / rate, 1)
                return True
            sampled.items += 1
            sampled.weight += 1.0 / rate
            samples = sampled.samples
            if len(samples) < self._max_samples:
                samples.append(value)
            else:
                # Algorithm R: every value seen so far stays with equal probability.
                # (int(random() * n) is uniform on [0, n) for any n below 2**53, and a
                # fraction of randrange's cost on this per-sample path.)
                slot = int(self._random.random() * sampled.items)
                if slot < self._max_samples:
                    samples[slot] = value
        return True

    def drain(self) -> Iterator[AggregatedLine]:
        """Yield every context once and start a new, empty interval."""
        increments, counts = self._increments, self._counts
        gauges, sets, sampled = self._gauges, self._sets, self._sampled
        self._increments = Counter()
        self._counts, self._gauges, self._sets, self._sampled = {}, {}, {}, {}
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
        for (type_, name, tags), entry in sampled.items():
            kept = len(entry.samples)
            rate = 1.0 if kept >= entry.weight else kept / entry.weight
            yield AggregatedLine(type_, name, tags, tuple(entry.samples), rate, entry.items)


def _int_if_whole(value: float) -> float:
    return int(value) if value == int(value) else value
