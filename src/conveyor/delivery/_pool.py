"""`Pool`: how many worker threads a dispatcher runs, between ``min_workers`` and
``max_workers``.

The seed's design starts a fixed number of threads and leaves "create/destroy them
depending on queue size" as tedious work. Here the dispatcher's supervisor asks the
pool to grow when the queue is deeper than a threshold, or its oldest item older
than one, and no worker is idle: both signs that the workers cannot keep up (a slow
endpoint shows up as age long before depth). A worker that finds nothing to do for
``idle_timeout`` seconds leaves, down to ``min_workers``. Threads start lazily (on the
first item, never at construction: a prefork server's master must not own threads)
and never at interpreter exit (Python 3.12+ refuses, and it would be too late).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Pool:
    """Counts and starts workers; ``run(worker)`` is the worker's body."""

    def __init__(
        self, run: Callable[[], bool], min_workers: int, max_workers: int, name: str
    ) -> None:
        self._run = run
        self.min = min_workers
        self.max = max_workers
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self.size = 0  # started and not yet retired
        self.busy = 0  # sending right now
        self.peak = 0
        self._leaving = 0
        self._serial = 0
        self._threads: list[threading.Thread] = []

    def spawn(self) -> bool:
        """Start one worker if below ``max``; False if not (full, or at exit)."""
        with self._cond:
            if self.size >= self.max:
                return False
            self.size += 1
            self._serial += 1
            serial = self._serial
        thread = threading.Thread(target=self._main, name=f"{self._name}-{serial}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutting down (3.12+): no new threads
            with self._cond:
                self.size -= 1
                self._cond.notify_all()
            return False
        with self._cond:
            self.peak = max(self.peak, self.size)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        return True

    def _main(self) -> None:
        retired = False
        try:
            retired = self._run()  # True: it left through try_retire()
        finally:
            with self._cond:
                self.size -= 1
                if retired:
                    self._leaving -= 1
                self._cond.notify_all()

    def try_retire(self) -> bool:
        """An idle worker asks to leave: yes while the others stay at least ``min``."""
        with self._cond:
            if self.size - self._leaving > self.min:
                self._leaving += 1
                return True
            return False

    def sending(self, delta: int) -> None:
        with self._cond:
            self.busy += delta

    def idle(self) -> int:
        with self._cond:
            return self.size - self.busy

    def wait_for(self, predicate: Callable[[int], bool], timeout: float) -> bool:
        """Wait until ``predicate(size)`` holds (tests and close use it)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.size), timeout)

    def join(self, timeout: float) -> None:
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(max(0.0, timeout))
