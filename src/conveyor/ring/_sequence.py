"""The sequences' common behaviour and the single-owner sequences SP and SC.

A sequence hands out cursors into a :class:`RingQueue`. ``next()`` never blocks:

* a cursor ``>= 0``: the slot is yours until you call ``done()``;
* ``-1``: unavailable (ring full for a producer, nothing published for a consumer);
* ``-2``: a multi- sequence lost a race to another thread; try again.

Single-owner sequences (SP, SC) belong to one thread at a time and need no atomic
operation: each field has one writer. Under the GIL every bytecode is atomic and the
GIL hand-off orders memory; on a free-threaded build an attribute store is a release
store of one pointer and a load is an acquire load, so a consumer that sees a new
cursor also sees the slot written before it. (That is the only guarantee relied on.)
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import CursorError
from ._graph import Node
from ._queue import check_capacity
from ._wait import BlockingWait, WaitStrategy, check_timeout


class Sequence(Node):
    """What every sequence offers; see the subclasses for who may call what."""

    __slots__ = ("_cache", "_value", "_wait")

    def __init__(self, wait: WaitStrategy | None) -> None:
        super().__init__()
        if wait is not None and not isinstance(wait, WaitStrategy):
            raise TypeError(f"wait must be a WaitStrategy, not {type(wait).__name__}")
        self._wait: WaitStrategy = BlockingWait() if wait is None else wait
        self._value = -1
        self._cache = -1

    def next(self) -> int:
        """A cursor ``>= 0``, ``-1`` if unavailable, ``-2`` if another thread won a race."""
        raise NotImplementedError

    def done(self, cursor: int) -> None:
        """Publish (producer) or release (consumer) every cursor up to ``cursor``."""
        raise NotImplementedError

    def current(self) -> int:
        return self._value

    @property
    def wait_strategy(self) -> WaitStrategy:
        """The strategy :meth:`next_blocking` and :meth:`next_async` wait with."""
        return self._wait

    def next_blocking(self, timeout: float | None = None) -> int:
        """Wait with this sequence's strategy until ``next()`` gives a cursor.

        Raises :class:`RingTimeoutError` after ``timeout`` seconds and :class:`AlertedError` once
        the strategy is alerted.
        """
        timeout = check_timeout(timeout)
        cursor = self.next()
        if cursor >= 0:
            return cursor
        return self._wait.wait_for(self.next, timeout, self._waiting_for())

    async def next_async(self, timeout: float | None = None) -> int:
        """Like :meth:`next_blocking`, for a coroutine: the event loop keeps running."""
        timeout = check_timeout(timeout)
        cursor = self.next()
        if cursor >= 0:
            return cursor
        return await self._wait.wait_for_async(self.next, timeout, self._waiting_for())

    def _waiting_for(self) -> str:
        if self._is_producer:
            return f"{self!r}: no free slot (ring full)"
        return f"{self!r}: nothing published"

    def _signal_function(self) -> Callable[[], None]:
        return self._wait.signal

    def _set_current(self, value: int) -> None:
        self._value = value
        self._cache = value

    def _unlink(self) -> None:
        super()._unlink()
        self._set_current(-1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(current={self._value})"


class SPSequence(Sequence):
    """Single-producer sequence: one thread claims slots and publishes them.

    Not thread-safe: one producing thread at a time (use :class:`MPSequence` for more).
    ``next()`` does not claim: it returns the same cursor until ``done()`` publishes it.
    Batch publishing: ``c = seq.next(); hi = seq.available()``, fill ``[c, hi)``, then
    ``seq.done(hi - 1)``.
    """

    __slots__ = ("_cycle",)
    _is_producer = True

    def __init__(self, capacity: int, wait: WaitStrategy | None = None) -> None:
        super().__init__(wait)
        self._cycle = check_capacity(capacity)
        self._set_current(-1)

    def next(self) -> int:
        nxt = self._value + 1
        lo = nxt - self._cycle  # the cursor whose slot we would overwrite
        if lo > self._cache:  # touch the consumers' side only when the cached gate is used up
            cache = self._barrier._available_index(lo)
            self._cache = cache
            if lo > cache:
                return -1
        return nxt

    def available(self) -> int:
        """One past the last cursor this producer may fill without asking again."""
        return self._cache + self._cycle + 1

    def done(self, cursor: int) -> None:
        if not self._value < cursor <= self._cache + self._cycle:
            raise CursorError(
                f"{self!r}.done({cursor}): a producer may publish only cursors after "
                f"{self._value} and below available() = {self._cache + self._cycle + 1}"
            )
        self._value = cursor
        self._wake()

    def _available_index(self, lo: int) -> int:
        return self._value

    def _set_current(self, value: int) -> None:
        self._value = value
        # The gate is unknown: the first next() asks the barrier, which also proves
        # the graph is closed before anything is written.
        self._cache = value - self._cycle


class SCSequence(Sequence):
    """Single-consumer sequence: one thread reads what its barrier has released.

    Not thread-safe: one consuming thread at a time (use :class:`MCSequence` for a pool).
    ``start`` is the last cursor already consumed; a subscriber joining a running
    :class:`FanOut` is moved to the producer's current position when it joins.
    Batch consuming: ``c = seq.next(); hi = seq.available()``, read ``[c, hi)``, then
    ``seq.done(hi - 1)``.
    """

    __slots__ = ()

    def __init__(self, start: int = -1, wait: WaitStrategy | None = None) -> None:
        super().__init__(wait)
        if start < -1:
            raise ValueError(f"start must be >= -1, got {start}")
        self._set_current(start)

    def next(self) -> int:
        nxt = self._value + 1
        if nxt <= self._cache:
            return nxt
        cache = self._barrier._available_index(nxt)
        self._cache = cache
        return nxt if nxt <= cache else -1

    def available(self) -> int:
        """One past the last cursor this consumer may read without asking again."""
        return self._cache + 1

    def done(self, cursor: int) -> None:
        if not self._value < cursor <= self._cache:
            raise CursorError(
                f"{self!r}.done({cursor}): a consumer may release only cursors after "
                f"{self._value} up to {self._cache}, the last one next() made available"
            )
        self._value = cursor
        self._wake()

    def _available_index(self, lo: int) -> int:
        return self._value
