"""The dispatcher's books: every submitted item ends up delivered, rejected or dropped
(and says why), or is still pending.

``submitted + recovered == delivered + rejected + dropped + pending`` holds at every
snapshot, because nothing is counted twice: ``submitted`` is read off the ring's
producer cursor plus the refusals, and every accepted item is *resolved* exactly once,
by whoever takes it off the ring (a worker, an eviction, ``close()``).

Resolution is also what ``flush()`` waits for. Items are numbered by their ring
cursor (leftovers from a spool get negative numbers, older than anything submitted
now), so "everything accepted before this flush" is "every number up to the producer
cursor read at the call", and a flush waiter just counts resolutions of numbers at or
below its mark. No list of live items is kept, and later submissions cannot hold a
flush back.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Why an item was dropped. Each reason is counted separately.
DROP_REASONS = (
    "queue_full",  # overflow="drop_newest": the newest item was refused
    "queue_evicted",  # overflow="drop_oldest": the oldest queued item made room
    "block_timeout",  # overflow="block": no room within block_timeout
    "spool_full",  # the spool held max_spool items and the policy refused this one
    "spool_evicted",  # overflow="drop_oldest" on a full spool: an old leftover made room
    "invalid",  # could not be encoded (not JSON-serialisable)
    "too_large",  # one item larger than the transport's batch byte limit
    "retry_deadline",  # still failing when its retry deadline (or attempts) ran out
    "closed",  # submitted after close(), or still queued when close() gave up
)


@dataclass(frozen=True)
class DeliveryStatistics:
    """A snapshot of a :class:`~conveyor.Dispatcher`'s books.

    ``submitted + recovered == delivered + rejected_total + dropped_total + pending``.
    ``recovered`` counts items left in the spool by an earlier process and loaded by
    this one. ``rejected`` is keyed by the response's reason (``"400 Bad Request"``).
    ``pending`` is the sum of what is queued, being sent, waiting for a retry and, with
    a spool, still on disk from an earlier process. ``inline`` is True in a process
    that may not start threads (a child forked in C without Python hooks): there the
    callers of ``submit()``, ``flush()`` and the exit flush do the delivery work.
    """

    submitted: int
    recovered: int
    delivered: int
    rejected: Mapping[str, int]
    dropped: Mapping[str, int]
    pending: int
    queue_depth: int
    queue_capacity: int
    retrying: int
    workers: int
    workers_peak: int
    requests: int
    request_failures: Mapping[str, int]
    breaker: str
    breaker_opened: int
    spooled: int
    spool_rows: int
    destination: str
    inline: bool = False
    dropped_total: int = field(init=False)
    rejected_total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropped_total", sum(self.dropped.values()))
        object.__setattr__(self, "rejected_total", sum(self.rejected.values()))
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))
        object.__setattr__(self, "rejected", MappingProxyType(dict(self.rejected)))
        object.__setattr__(self, "request_failures", MappingProxyType(dict(self.request_failures)))


class Waiter:
    __slots__ = ("count", "event", "mark", "needed")

    def __init__(self, mark: int, needed: int, count: int) -> None:
        self.mark = mark
        self.needed = needed
        self.count = count
        self.event = threading.Event()


class Books:
    """Counters behind one lock, and the flush waiters they release."""

    def __init__(self) -> None:
        self.lock = threading.Condition(threading.Lock())
        self.refused: Counter[str] = Counter()  # never accepted (counted in submitted)
        self.recovered = 0
        self.delivered = 0
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()  # accepted, then dropped
        self.resolved = 0
        self.requests = 0
        self.request_failures: Counter[str] = Counter()
        self._waiters: list[Waiter] = []

    def refuse(self, reason: str) -> None:
        assert reason in DROP_REASONS, reason
        with self.lock:
            self.refused[reason] += 1
            self.lock.notify_all()

    def request(self, failure: str | None) -> None:
        """One request made; ``failure`` is its reason if it did not succeed."""
        with self.lock:
            self.requests += 1
            if failure is not None:
                self.request_failures[failure] += 1
            self.lock.notify_all()

    def wait(self, predicate: Callable[[Books], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds; re-checked at every change (a
        rendez-vous for tests and tools, never used on a hot path)."""
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self), timeout)

    def recover(self, n: int) -> None:
        with self.lock:
            self.recovered += n

    def resolve(self, seqs: Iterable[int], outcome: str, reason: str = "") -> None:
        """Record the end of the items numbered ``seqs``: ``outcome`` is ``"delivered"``,
        ``"rejected"`` (by ``reason``) or ``"dropped"`` (by ``reason``)."""
        seqs = list(seqs)
        n = len(seqs)
        if not n:
            return
        with self.lock:
            if outcome == "delivered":
                self.delivered += n
            elif outcome == "rejected":
                self.rejected[reason] += n
            else:
                assert reason in DROP_REASONS, reason
                self.dropped[reason] += n
            self.resolved += n
            self.lock.notify_all()
            if self._waiters:
                for waiter in self._waiters:
                    mark = waiter.mark
                    waiter.count += sum(1 for s in seqs if s <= mark)
                    if waiter.count >= waiter.needed:
                        waiter.event.set()
                self._waiters = [w for w in self._waiters if not w.event.is_set()]

    def waiter(self, mark: int, leftovers: int) -> Waiter:
        """A flush waiter for every item numbered up to ``mark`` (plus every leftover).

        The caller holds :attr:`lock` and read ``mark`` (the producer cursor) under it:
        every item resolved so far was accepted before, so it already counts.
        """
        waiter = Waiter(mark, mark + 1 + leftovers, self.resolved)
        if waiter.count >= waiter.needed:
            waiter.event.set()
        else:
            self._waiters.append(waiter)
        return waiter

    def forget(self, waiter: Waiter) -> None:
        with self.lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
