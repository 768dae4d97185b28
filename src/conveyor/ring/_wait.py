"""Wait strategies: what a thread (or coroutine) does while a sequence says -1.

``next()`` never waits: it answers at once with a cursor, -1 or -2. Waiting is the
caller's choice, made per sequence by giving it one of these strategies and then
calling ``next_blocking()`` or ``await next_async()``.

Under the GIL a pure busy-spin is pathological: the spinning thread keeps the GIL
until the switch interval (5 ms) forces a hand-off, so a ping-pong between two
spinning threads costs milliseconds. Every strategy here releases the GIL while it
waits: ``os.sched_yield()`` (a few microseconds per hand-off), ``time.sleep`` with
back-off, or a condition variable.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import threading
import time
from collections.abc import Callable

from ._errors import AlertedError, RingTimeoutError

Poll = Callable[[], int]

#: On a free-threaded build, a plain attribute read in ``signal()`` is not enough to see a
#: waiter that registered a moment ago (that needs sequentially consistent loads and
#: stores, which CPython does not promise for attributes), so ``signal()`` always takes
#: the condition's lock there. Under the GIL a bytecode is atomic and the GIL hand-off
#: orders memory, so the lock-free check of the waiter count is exact.
_GIL_DISABLED = not getattr(sys, "_is_gil_enabled", lambda: True)()

_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` as a wait takes it: None (or infinity) waits for ever; a negative or
    NaN timeout is a mistake, reported before anything else happens."""
    if timeout is None or timeout == math.inf:
        return None
    if not timeout >= 0:  # also catches NaN
        raise ValueError(f"timeout must be a number of seconds >= 0, or None; got {timeout!r}")
    return timeout


def _deadline(timeout: float | None) -> float | None:
    timeout = check_timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _timed_out(what: str, timeout: float | None) -> RingTimeoutError:
    return RingTimeoutError(f"{what} within {timeout} s")


class WaitStrategy:
    """Base class: how a sequence's owner idles between polls, and how it is woken.

    ``signal()`` is called by the sequence this one waits on each time that sequence
    publishes or releases; ``alert()`` wakes every waiter for good and makes their waits
    raise :class:`AlertedError` (use it to stop a pipeline whose threads block in waits).
    """

    __slots__ = ("_alerted",)

    def __init__(self) -> None:
        self._alerted = False

    def signal(self) -> None:
        """Wake waiters; polling strategies have nobody to wake."""

    def alert(self) -> None:
        """Make every current and future wait on this strategy raise :class:`AlertedError`."""
        self._alerted = True
        self.signal()

    @property
    def alerted(self) -> bool:
        """True once :meth:`alert` has been called."""
        return self._alerted

    def _idle(self, attempt: int) -> None:
        raise NotImplementedError

    def _async_pause(self, attempt: int) -> float:
        """Seconds an asyncio waiter sleeps before polling again."""
        return min(0.001, 0.00005 * (1 << min(attempt, 5)))

    def wait_for(self, poll: Poll, timeout: float | None, what: str) -> int:
        """Poll until it gives a cursor; ``what`` names the wait in a timeout error."""
        deadline = _deadline(timeout)
        attempt = 0
        while True:
            if self._alerted:
                raise AlertedError(f"{what}: the wait strategy was alerted")
            cursor = poll()
            if cursor >= 0:
                return cursor
            if deadline is not None and time.monotonic() >= deadline:
                raise _timed_out(what, timeout)
            if cursor == -2:
                _sched_yield()  # let the thread that won the race finish its claim
            else:
                self._idle(attempt)
                attempt += 1

    async def wait_for_async(self, poll: Poll, timeout: float | None, what: str) -> int:
        """Like :meth:`wait_for`, but yields to the event loop instead of the OS."""
        deadline = _deadline(timeout)
        attempt = 0
        while True:
            if self._alerted:
                raise AlertedError(f"{what}: the wait strategy was alerted")
            cursor = poll()
            if cursor >= 0:
                return cursor
            if deadline is not None and time.monotonic() >= deadline:
                raise _timed_out(what, timeout)
            await asyncio.sleep(0 if cursor == -2 else self._async_pause(attempt))
            attempt += 1


class YieldingWait(WaitStrategy):
    """Give the processor (and the GIL) away with ``os.sched_yield()`` between polls.

    The lowest wake-up latency short of spinning (a few microseconds per hand-off), at
    the cost of a busy core while idle. For hot pipelines that are rarely empty.
    """

    __slots__ = ()

    def _idle(self, attempt: int) -> None:
        _sched_yield()


class SleepingWait(WaitStrategy):
    """Yield a few times, then sleep with exponential back-off up to ``max_sleep``.

    Cheap while idle, with a wake-up latency bounded by ``max_sleep`` once idle for long.
    """

    __slots__ = ("_max_sleep", "_yields")

    def __init__(self, yields: int = 100, max_sleep: float = 0.001) -> None:
        super().__init__()
        if yields < 0:
            raise ValueError(f"yields must be >= 0, got {yields}")
        if not max_sleep > 0:
            raise ValueError(f"max_sleep must be > 0, got {max_sleep}")
        self._yields = yields
        self._max_sleep = max_sleep

    def _idle(self, attempt: int) -> None:
        if attempt < self._yields:
            _sched_yield()
        else:
            step = min(attempt - self._yields, 20)
            time.sleep(min(self._max_sleep, 0.00005 * (1 << step)))

    def _async_pause(self, attempt: int) -> float:
        return min(self._max_sleep, 0.00005 * (1 << min(attempt, 20)))


class BlockingWait(WaitStrategy):
    """Sleep on a condition variable until signalled: no CPU at all while idle.

    A producer's ``done()`` wakes consumers blocked on an empty ring and a consumer's
    ``done()`` wakes a producer blocked on a full one. ``signal()`` costs one attribute
    read while nobody waits. Asyncio waiters are woken through
    ``loop.call_soon_threadsafe``, so a coroutine can consume without a thread.
    """

    __slots__ = ("_async_waiters", "_cond", "_unnotified", "_waiting")

    def __init__(self) -> None:
        super().__init__()
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0
        # Raised by a waiter as it registers, lowered by the signal() that notifies it.
        # signal() tests this, not the count: a notified waiter stays counted until it
        # runs again (up to a switch interval under the GIL), and notifying it again on
        # every done() meanwhile cost ten times the call itself.
        self._unnotified = False
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def signal(self) -> None:
        # Lost wake-ups are impossible: a waiter raises `_unnotified` (under the lock)
        # before its last poll, and the publisher stores its cursor before reading it.
        if self._unnotified or _GIL_DISABLED:
            with self._cond:
                if self._unnotified:
                    self._unnotified = False
                    self._cond.notify_all()
                    for loop, future in self._async_waiters:
                        loop.call_soon_threadsafe(_resolve, future)
                    self._async_waiters.clear()

    def wait_for(self, poll: Poll, timeout: float | None, what: str) -> int:
        deadline = _deadline(timeout)
        while True:
            if self._alerted:
                raise AlertedError(f"{what}: the wait strategy was alerted")
            cursor = poll()
            if cursor >= 0:
                return cursor
            if cursor == -2:
                _sched_yield()
                continue
            with self._cond:
                self._waiting += 1
                self._unnotified = True
                try:
                    cursor = poll()  # again, now that a signal cannot be missed
                    if cursor >= 0:
                        return cursor
                    if cursor == -1 and not self._alerted:
                        if deadline is None:
                            self._cond.wait()
                        else:
                            remaining = deadline - time.monotonic()
                            if remaining > 0:
                                self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
            if deadline is not None and time.monotonic() >= deadline:
                cursor = poll()
                if cursor >= 0:
                    return cursor
                raise _timed_out(what, timeout)

    async def wait_for_async(self, poll: Poll, timeout: float | None, what: str) -> int:
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout)
        while True:
            if self._alerted:
                raise AlertedError(f"{what}: the wait strategy was alerted")
            cursor = poll()
            if cursor >= 0:
                return cursor
            if cursor == -2:
                await asyncio.sleep(0)
                continue
            future: asyncio.Future[None] = loop.create_future()
            entry = (loop, future)
            with self._cond:  # held for a poll only: never blocks the loop for long
                self._waiting += 1
                self._unnotified = True
                self._async_waiters.append(entry)
                cursor = poll()
            try:
                if cursor >= 0:
                    return cursor
                if cursor == -1 and not self._alerted:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is None or remaining > 0:
                        await asyncio.wait([future], timeout=remaining)
            finally:
                with self._cond:
                    self._waiting -= 1
                    if entry in self._async_waiters:
                        self._async_waiters.remove(entry)
            if deadline is not None and time.monotonic() >= deadline:
                cursor = poll()
                if cursor >= 0:
                    return cursor
                raise _timed_out(what, timeout)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
