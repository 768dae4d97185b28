"""Exponential back-off with jitter, on an injectable clock.

After a transport fails to resolve, connect or write, trying again on the very next
packet would turn one outage into a storm of syscalls (and DNS queries, and connect
timeouts that each block the sender thread). So a failure opens a quiet period during
which ``send()`` fails fast without touching the network; each consecutive failure
doubles it, up to a ceiling; a delivered packet resets it.

The jitter ("equal jitter": a delay drawn from ``[d/2, d]``) spreads out the retries
of the many processes a prefork server starts at once. It uses the global ``random``
generator on purpose: CPython reseeds it in every forked child, a private generator
would give every worker the same sequence.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: The first quiet period after a failure (before jitter), in seconds.
FIRST_DELAY = 0.05
#: The longest quiet period (before jitter), in seconds.
MAX_DELAY = 5.0


class Backoff:
    """When the next attempt may be made; time comes from ``clock`` (seconds)."""

    __slots__ = ("_clock", "_failures", "_first", "_last_reason", "_max", "_retry_at")

    def __init__(
        self,
        clock: Callable[[], float],
        first: float = FIRST_DELAY,
        maximum: float = MAX_DELAY,
    ) -> None:
        self._clock = clock
        self._first = first
        self._max = maximum
        self._failures = 0
        self._retry_at = 0.0
        self._last_reason = ""

    def ready(self) -> bool:
        """True if an attempt may be made now (the clock is not read after a success)."""
        return not self._failures or self._clock() >= self._retry_at

    def remaining(self) -> float:
        """Seconds until the next attempt may be made (0 if it may be made now)."""
        if not self._failures:
            return 0.0
        return max(0.0, self._retry_at - self._clock())

    @property
    def failures(self) -> int:
        """Consecutive failures since the last success."""
        return self._failures

    @property
    def last_reason(self) -> str:
        """The reason of the failure that opened the current quiet period."""
        return self._last_reason

    def failed(self, reason: str) -> float:
        """Record a failure; return the quiet period it opens, in seconds."""
        delay = min(self._max, self._first * 2.0 ** min(self._failures, 32))
        delay *= 0.5 + random.random() / 2  # jitter, not cryptography
        self._failures += 1
        self._retry_at = self._clock() + delay
        self._last_reason = reason
        return delay

    def succeeded(self) -> None:
        """A packet got through: the next failure starts again from the first delay."""
        self._failures = 0
