"""Helpers shared by the ring's tests.

Imported as a top-level module (``from ring_support import Slot``): pytest puts this
directory on ``sys.path`` when it collects the tests next to it (no ``__init__`` files),
and mypy finds it the same way.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

from conveyor.ring import BlockingWait, Sequence

#: A wait that ends in a timeout only when the code under test is broken: long enough
#: for a loaded 2-core machine, short enough to fail before the test's own timeout.
GENEROUS = 20.0


class Slot:
    """A ring slot: ``value`` is the payload, ``stamp`` the cursor it was written for.

    Readers check ``stamp == cursor``: a slot overwritten by a later lap (a producer
    that did not wait for every consumer) has a stamp ``capacity`` or more ahead.
    """

    __slots__ = ("stamp", "value")

    def __init__(self) -> None:
        self.value = -1
        self.stamp = -1

    def write(self, cursor: int, value: int) -> None:
        self.value = value
        self.stamp = cursor


class Worker(threading.Thread):
    """A daemon thread that records the exception its target raised, if any."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # reported by join_all in the test's thread
            self.error = exc


def start(*targets: tuple[str, Callable[[], None]]) -> list[Worker]:
    """Start one :class:`Worker` per ``(name, target)`` and return them."""
    workers = [Worker(target, name) for name, target in targets]
    for worker in workers:
        worker.start()
    return workers


def join_all(workers: list[Worker], timeout: float = GENEROUS) -> None:
    """Join every worker within ``timeout`` seconds in all; fail if one is still running,
    re-raise the first error a worker raised."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    alive = [worker for worker in workers if worker.is_alive()]
    assert not alive, f"threads still running after {timeout} s:\n{stacks(alive)}"
    for worker in workers:
        if worker.error is not None:
            raise worker.error
    left = [thread.name for thread in threading.enumerate() if thread in workers]
    assert not left, f"threads left behind: {left}"


def stacks(threads: list[Worker]) -> str:
    """Where each of ``threads`` is now (and every other thread, for context)."""
    frames = sys._current_frames()
    lines = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is None or thread is threading.current_thread():
            continue
        mark = "STUCK " if thread in threads else ""
        lines.append(f"--- {mark}{thread.name}\n{''.join(traceback.format_stack(frame, 8))}")
    return "\n".join(lines)


def until(predicate: Callable[[], bool], what: str, timeout: float = GENEROUS) -> None:
    """Spin (yielding the processor and the GIL) until ``predicate()`` holds.

    Used to wait for a state that has no event of its own, such as "that thread is now
    asleep in its wait strategy"; never as a delay.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        os.sched_yield()


def sleeping_waiters(sequence: Sequence) -> int:
    """How many threads or coroutines sleep in ``sequence``'s :class:`BlockingWait`."""
    strategy = sequence.wait_strategy
    assert isinstance(strategy, BlockingWait)
    return strategy._waiting


def until_asleep(sequence: Sequence, count: int = 1) -> None:
    """Wait until ``count`` waiters sleep in ``sequence``'s BlockingWait (so a wake-up that
    follows must come from a signal, not from the waiter's own polling)."""
    until(lambda: sleeping_waiters(sequence) >= count, f"{count} waiter(s) sleep on {sequence!r}")
