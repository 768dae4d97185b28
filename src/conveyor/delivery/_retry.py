"""`Retry`: when a failed request is tried again, and which failures are worth it.

Back-off is exponential with *full* jitter (a delay drawn from ``[0, d]``): after an
outage every process of a fleet retries at once, and full jitter spreads those
retries over the whole window instead of a band around ``d``. The delay is capped
(``maximum``) and every item has a total budget (``deadline``) counted from its
first attempt, so a dead endpoint costs a bounded amount of memory and time.

What is retried follows HTTP's meaning rather than a guess: 408 (the server timed
the request out), 429 (too many requests) and every 5xx are transient, as are
connection errors and timeouts (no status at all). Any other 4xx means "this request
is wrong" and sending it again would fail again: it is rejected, and counted so.
A ``Retry-After`` header (seconds or an HTTP date) replaces the computed back-off:
the server knows better than our guess.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Retry:
    """How often and how long a failed item is tried again.

    Args:
        initial: the back-off ceiling after the first failure, in seconds; it doubles
            with each further failure.
        maximum: the largest back-off ceiling, in seconds.
        deadline: an item that is still not delivered this many seconds after its
            first attempt is dropped (reason ``"retry_deadline"``).
        attempts: an optional cap on the number of attempts per item.
    """

    initial: float = 0.5
    maximum: float = 30.0
    deadline: float = 300.0
    attempts: int | None = None

    def __post_init__(self) -> None:
        if not self.initial > 0 or not self.maximum >= self.initial:
            raise ValueError(f"need 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if not self.deadline >= 0:
            raise ValueError(f"deadline must be >= 0 seconds, got {self.deadline}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 or None, got {self.attempts}")

    def ceiling(self, failures: int) -> float:
        """The back-off ceiling after ``failures`` consecutive failures (>= 1)."""
        return min(self.maximum, self.initial * 2.0 ** min(max(failures, 1) - 1, 64))

    def backoff(self, failures: int, uniform: float | None = None) -> float:
        """A delay drawn from ``[0, ceiling(failures)]`` ("full jitter").

        ``uniform`` (in ``[0, 1)``) is for tests; the default draws from the global
        generator on purpose: CPython reseeds it in every forked child, so a fleet of
        prefork workers does not retry in lock-step.
        """
        u = random.random() if uniform is None else uniform
        return u * self.ceiling(failures)


#: Statuses that mean "try again later".
def is_retryable(status: int | None) -> bool:
    """True for connection errors (``None``), 408, 429 and every 5xx."""
    return status is None or status in {408, 429} or 500 <= status <= 599


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or None if absent or unreadable.

    ``now`` is the wall-clock time (``time.time()``) an HTTP date is measured from. A
    date in the past means "now" (0 seconds).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when.timestamp() - now)
