"""A prototype of a proposed change to ``conveyor.ring.BlockingWait``, kept here so that
the benchmarks can measure it next to the shipped class in the same run.

Problem (measured in docs/benchmarks.md): ``BlockingWait.signal()`` takes the lock and
calls ``notify_all()`` whenever the waiter count is non-zero. A waiter that has been
notified stays counted until it runs again, and under the GIL that can take up to a
switch interval (5 ms) after the notify. Every ``done()`` by the other side meanwhile
pays for the lock and a ``Condition.notify_all()`` that wakes nobody new (~0.6 us
instead of ~0.04 us): on a per-item path that is most ``done()`` calls.

Change: a flag ``_unnotified``, set by a waiter when it registers (under the lock,
before its last poll) and cleared by the ``signal()`` that notifies. ``signal()`` checks
the flag instead of the count, so it notifies once per registration. No wake-up can be
lost, for the same reason as before: the waiter sets the flag before its last poll and
the publisher stores its cursor before reading the flag. This is not part of
``conveyor.ring``; the asyncio path is left as shipped (async waiters still force a
notify, see ``signal``).
"""

from __future__ import annotations

import time

from conveyor.ring import AlertedError, BlockingWait
from conveyor.ring._wait import Poll, _deadline, _resolve, _sched_yield, _timed_out


class NotifyOnceWait(BlockingWait):
    """``BlockingWait`` whose ``signal()`` notifies once per waiter registration."""

    __slots__ = ("_unnotified",)

    def __init__(self) -> None:
        super().__init__()
        self._unnotified = False

    def signal(self) -> None:
        if self._unnotified or self._async_waiters:
            with self._cond:
                self._unnotified = False
                self._cond.notify_all()
                for loop, future in self._async_waiters:
                    loop.call_soon_threadsafe(_resolve, future)
                self._async_waiters.clear()

    def wait_for(self, poll: Poll, timeout: float | None, what: str) -> int:
        # BlockingWait.wait_for with one added line (marked)
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
                self._unnotified = True  # the added line
                try:
                    cursor = poll()
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
