"""Multi- sequences MP and MC: any number of threads, never the same cursor twice.

Python has no compare-and-swap, so the claim (check capacity, bump the counter) is
made atomic with a ``threading.Lock`` taken with ``acquire(blocking=False)``: a thread
that finds it held has lost the race and gets -2, exactly the answer a failed CAS gives
in QuestDB. A lock is correct on a GIL build and on a free-threaded build alike.

Completion is recorded per slot: ``done(c)`` stores the lap number ``c >> log2(capacity)``
in ``flags[c & mask]``. A single list item store and load are atomic in both builds
(documented for free-threaded lists), and the lap number tells "done in this lap"
from "done one lap ago", so no lock is needed there. Batches are not offered: each
cursor is claimed and completed on its own.
"""

from __future__ import annotations

import threading

from ._errors import CursorError
from ._queue import check_capacity
from ._sequence import Sequence
from ._wait import WaitStrategy


class _MultiSequence(Sequence):
    __slots__ = ("_claim", "_cycle", "_flags", "_mask", "_shift")

    def __init__(self, capacity: int, start: int, wait: WaitStrategy | None) -> None:
        super().__init__(wait)
        self._cycle = check_capacity(capacity)
        self._mask = capacity - 1
        self._shift = capacity.bit_length() - 1
        self._flags = [-1] * capacity
        self._claim = threading.Lock()
        if start < -1:
            raise ValueError(f"start must be >= -1, got {start}")
        self._set_current(start)

    def done(self, cursor: int) -> None:
        value = self._value
        slot = cursor & self._mask
        lap = cursor >> self._shift
        if not value - self._cycle < cursor <= value or self._flags[slot] == lap:
            raise CursorError(
                f"{self!r}.done({cursor}): not a cursor claimed by next() and not yet done"
            )
        self._flags[slot] = lap
        self._wake()

    def _available_index(self, lo: int) -> int:
        flags = self._flags
        mask = self._mask
        shift = self._shift
        hi = self._value
        if lo <= hi - self._cycle:
            # Flags older than a lap are overwritten; everything up to hi - capacity is
            # done (claiming hi needed it released downstream), so start in the last lap.
            lo = hi - self._cycle + 1
        while lo <= hi and flags[lo & mask] == lo >> shift:
            lo += 1
        return lo - 1

    def _set_current(self, value: int) -> None:
        with self._claim:
            # Everything up to `value` counts as done, so the other side can pass it.
            for cursor in range(value - self._cycle + 1, value + 1):
                self._flags[cursor & self._mask] = cursor >> self._shift
            self._value = value
            # A producer's cache is the consumers' gate, unknown here: make the next
            # claim ask (and so prove the graph is closed); a consumer's is `value`.
            self._cache = value - self._cycle if self._is_producer else value


class MPSequence(_MultiSequence):
    """Multi-producer sequence: any number of threads claim and publish slots.

    Thread-safe: ``next()`` claims a distinct cursor per call (or returns -1/-2), and
    every claimed cursor must be published with ``done(cursor)``, promptly and even on
    error: consumers stop at the first claimed slot that is not done.
    """

    __slots__ = ()
    _is_producer = True

    def __init__(self, capacity: int, wait: WaitStrategy | None = None) -> None:
        super().__init__(capacity, -1, wait)

    def next(self) -> int:
        claim = self._claim
        if not claim.acquire(False):
            return -2
        try:  # released even if the barrier raises (graph not closed yet)
            nxt = self._value + 1
            lo = nxt - self._cycle
            if lo > self._cache:
                cache = self._barrier._available_index(lo)
                self._cache = cache
                if lo > cache:
                    return -1
            self._value = nxt
            return nxt
        finally:
            claim.release()


class MCSequence(_MultiSequence):
    """Multi-consumer sequence: a pool of threads shares the items, each item to one.

    Thread-safe. ``pub.then(MCSequence(n)).then(pub)`` is a self-balancing worker
    pool. Every claimed cursor must be released with ``done(cursor)``: the producer
    cannot reuse a slot until every cursor before it is done.
    """

    __slots__ = ()

    def __init__(self, capacity: int, start: int = -1, wait: WaitStrategy | None = None) -> None:
        super().__init__(capacity, start, wait)

    def next(self) -> int:
        claim = self._claim
        if not claim.acquire(False):
            return -2
        try:  # released even if the barrier raises (graph not closed yet)
            nxt = self._value + 1
            if nxt > self._cache:
                cache = self._barrier._available_index(nxt)
                self._cache = cache
                if nxt > cache:
                    return -1
            self._value = nxt
            return nxt
        finally:
            claim.release()
