"""`PacketRing`: the hand-off from listener threads to the one thread that parses.

Every listener thread (a UDP reader, a Unix datagram reader, the connection threads of
a stream listener) calls the sink with each complete packet. A ``PacketRing`` is such a
sink: a :class:`conveyor.ring.RingQueue` of slots, an :class:`~conveyor.ring.MPSequence`
for the many producers and an :class:`~conveyor.ring.SCSequence` for the one consumer,
which takes everything published so far in one batch.

A listener thread must never wait for the parser: while it waits, the kernel's socket
buffer fills and datagrams are lost where nobody counts them. So :meth:`put` never
blocks: when the ring is full the packet is dropped and counted (``"ring_full"``), the
same answer the Datadog Agent and Telegraf give ("message queue full"). Memory is
bounded by ``capacity`` packets.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from conveyor.ring import (
    AlertedError,
    BlockingWait,
    MPSequence,
    RingQueue,
    RingTimeoutError,
    SCSequence,
)

#: Packets of up to 64 KiB each: 4096 of them bound the ring to 256 MiB at worst,
#: and to about 6 MiB with the clients' usual 1432-byte datagrams.
DEFAULT_RING_CAPACITY = 4096

#: How many times ``put`` retries a claim lost to another producer before counting a
#: drop: the winner holds the claim for a few bytecodes, so this is never reached in
#: practice, but it bounds the time a listener thread can spend here.
_CLAIM_RETRIES = 1000

_sched_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


class _Slot:
    __slots__ = ("packet",)

    def __init__(self) -> None:
        self.packet: bytes = b""


@dataclass(frozen=True)
class PacketRingStatistics:
    """A snapshot of a :class:`PacketRing`: ``put == taken + depth`` for what was
    accepted; ``dropped`` counts the refused packets by reason."""

    capacity: int
    put: int
    taken: int
    depth: int
    dropped: Mapping[str, int]
    dropped_total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropped_total", sum(self.dropped.values()))
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))


class PacketRing:
    """Many producers put packets, one consumer takes them in batches.

    :meth:`put` (also available as calling the ring) is thread-safe and never blocks;
    :meth:`take` belongs to one consumer thread. :meth:`close` makes later puts drop
    (``"closed"``) and wakes a consumer blocked in :meth:`take`, which then returns
    what is left and finally an empty list.
    """

    __slots__ = ("_closed", "_drop_lock", "_dropped", "_pub", "_ring", "_sub", "_wait")

    def __init__(self, capacity: int = DEFAULT_RING_CAPACITY) -> None:
        self._ring: RingQueue[_Slot] = RingQueue(_Slot, capacity)
        self._wait = BlockingWait()
        self._pub = MPSequence(capacity)
        self._sub = SCSequence(wait=self._wait)
        self._pub.then(self._sub).then(self._pub)
        self._drop_lock = threading.Lock()
        self._dropped: Counter[str] = Counter()
        self._closed = False

    @property
    def capacity(self) -> int:
        return self._ring.capacity

    def put(self, packet: bytes) -> bool:
        """Queue ``packet`` for the consumer; False (and counted) if it was dropped."""
        if self._closed:
            self._drop("closed")
            return False
        pub = self._pub
        for _ in range(_CLAIM_RETRIES):
            cursor = pub.next()
            if cursor >= 0:
                try:
                    self._ring.get(cursor).packet = packet
                finally:
                    pub.done(cursor)
                return True
            if cursor == -1:
                break
            _sched_yield()  # -2: another producer is mid-claim
        self._drop("ring_full")
        return False

    def __call__(self, packet: bytes) -> None:
        """:meth:`put`, as a :data:`PacketSink` (the drop is counted, not returned)."""
        self.put(packet)

    def take(self, timeout: float | None = None) -> list[bytes]:
        """Every packet published so far, oldest first; waits up to ``timeout`` seconds
        (None: until something arrives or the ring is closed) and returns ``[]`` if
        nothing came. One consumer thread only."""
        sub = self._sub
        cursor = sub.next()
        if cursor < 0:
            if self._closed:
                return []
            try:
                cursor = sub.next_blocking(timeout)
            except (RingTimeoutError, AlertedError):
                return []
        hi = sub.available()
        ring = self._ring
        batch = []
        for index in range(cursor, hi):
            slot = ring.get(index)
            batch.append(slot.packet)
            slot.packet = b""  # do not keep a packet alive for a whole lap
        sub.done(hi - 1)
        return batch

    def close(self) -> None:
        """Refuse further packets and wake the consumer (idempotent)."""
        self._closed = True
        self._wait.alert()

    def statistics(self) -> PacketRingStatistics:
        put = self._pub.current() + 1
        taken = self._sub.current() + 1
        with self._drop_lock:
            dropped = dict(self._dropped)
        return PacketRingStatistics(
            capacity=self.capacity,
            put=put,
            taken=taken,
            depth=max(0, put - taken),
            dropped=dropped,
        )

    def _drop(self, reason: str) -> None:
        with self._drop_lock:
            self._dropped[reason] += 1

    def __repr__(self) -> str:
        return f"PacketRing(capacity={self.capacity})"
