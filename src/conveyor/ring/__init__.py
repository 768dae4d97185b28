"""conveyor's messaging core: a ring of preallocated slots and the sequences that
hand out cursors into it, after QuestDB's thread messaging and the LMAX Disruptor.

A one-producer, one-consumer pipeline::

    from conveyor.ring import RingQueue, SPSequence, SCSequence

    class Slot:
        value: int = 0

    ring = RingQueue(Slot, 1024)
    pub = SPSequence(ring.capacity)
    sub = SCSequence()
    pub.then(sub).then(pub)          # a graph is a cycle from the producer to itself

    # producer thread                      # consumer thread
    c = pub.next_blocking()                c = sub.next_blocking()
    ring.get(c).value = 42                 hi = sub.available()   # a whole batch
    pub.done(c)                            for i in range(c, hi): use(ring.get(i).value)
                                           sub.done(hi - 1)

``next()`` never blocks: it returns a cursor, -1 (unavailable) or -2 (a multi-
sequence lost a race). ``next_blocking()`` and ``await next_async()`` wait with the
sequence's :class:`WaitStrategy`.
"""

from ._errors import AlertedError, CursorError, GraphError, RingError, RingTimeoutError
from ._fanout import FanOut
from ._multi import MCSequence, MPSequence
from ._queue import RingQueue
from ._sequence import SCSequence, Sequence, SPSequence
from ._wait import BlockingWait, SleepingWait, WaitStrategy, YieldingWait

__all__ = [
    "AlertedError",
    "BlockingWait",
    "CursorError",
    "FanOut",
    "GraphError",
    "MCSequence",
    "MPSequence",
    "RingError",
    "RingQueue",
    "RingTimeoutError",
    "SCSequence",
    "SPSequence",
    "Sequence",
    "SleepingWait",
    "WaitStrategy",
    "YieldingWait",
]
