"""`RateLimitedLog`: at most one log line per reason per interval.

A dead destination, a client sending garbage or a failing backend can each produce a
failure per item, thousands a second; one line per reason per minute, with a count
of the lines held back, says the same without flooding the host's logs. Shared by
every layer that logs from a hot loop; imports nothing of conveyor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter


class RateLimitedLog:
    """Warnings to ``logger``, at most one per ``reason`` per ``interval`` seconds.

    Thread-safe: listener and worker threads may share one.
    """

    __slots__ = ("_held", "_interval", "_last", "_lock", "_logger")

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, reason: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``reason`` was logged within the interval."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval:
                self._held[reason] += 1
                return
            held = self._held.pop(reason, 0)
            self._last[reason] = now
        text = message % args if args else message
        suffix = f" ({held} similar messages suppressed)" if held else ""
        self._logger.warning("%s%s", text, suffix)
