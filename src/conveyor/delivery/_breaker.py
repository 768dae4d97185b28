"""`CircuitBreaker`: stop hammering an endpoint that is down, and notice when it is back.

Without one, a dead endpoint turns every item into a request that fails: workers spin
through connect timeouts, logs fill up, and the retries of thousands of items keep the
CPU busy for nothing. The breaker counts consecutive failed requests; at
``threshold`` it *opens*: workers stop taking items and sleep (no CPU, no sockets).
After a cool-down it lets exactly one request through (*half-open*, the probe). If the
probe succeeds the breaker closes and every worker resumes; if not, it opens again for
twice as long (up to ``max_cooldown``).

A ``429`` with ``Retry-After`` is not a failure of the endpoint but an order to wait:
:meth:`hold` pauses every worker until then without counting towards opening.

Time comes from an injectable clock, so tests can open and close it deterministically.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

#: What :meth:`CircuitBreaker.permit` answers.
WAIT = 0
GO = 1
PROBE = 2


class CircuitBreaker:
    """Shared by a dispatcher's workers; every method is thread-safe."""

    def __init__(
        self,
        clock: Callable[[], float],
        threshold: int = 5,
        cooldown: float = 1.0,
        max_cooldown: float = 60.0,
    ) -> None:
        if threshold < 1:
            raise ValueError(f"breaker threshold must be >= 1, got {threshold}")
        if not 0 < cooldown <= max_cooldown:
            raise ValueError(f"need 0 < cooldown <= max_cooldown, got {cooldown}, {max_cooldown}")
        self._clock = clock
        self._threshold = threshold
        self._base = cooldown
        self._max = max_cooldown
        self._cond = threading.Condition(threading.Lock())
        self._state = CLOSED
        self._failures = 0
        self._cooldown = cooldown
        self._reopen_at = 0.0
        self._hold_until = 0.0
        self._probing = False
        self.opened = 0  # how many times it opened (statistics)

    @property
    def state(self) -> str:
        with self._cond:
            self._advance()
            return self._state

    def _advance(self) -> None:
        if self._state == OPEN and self._clock() >= self._reopen_at:
            self._state = HALF_OPEN
            self._probing = False

    def permit(self) -> int:
        """May a worker send now? ``GO``, ``PROBE`` (the one trial request) or ``WAIT``."""
        with self._cond:
            if self._hold_until and self._clock() < self._hold_until:
                return WAIT
            self._advance()
            if self._state == CLOSED:
                return GO
            if self._state == HALF_OPEN and not self._probing:
                self._probing = True
                return PROBE
            return WAIT

    def blocked(self) -> bool:
        """True if a worker asking now would be told to wait (no state change)."""
        with self._cond:
            if self._hold_until and self._clock() < self._hold_until:
                return True
            self._advance()
            return self._state == OPEN or (self._state == HALF_OPEN and self._probing)

    def unused_probe(self) -> None:
        """The worker given ``PROBE`` had nothing to send: let another worker probe."""
        with self._cond:
            if self._state == HALF_OPEN:
                self._probing = False
                self._cond.notify_all()

    def succeeded(self) -> None:
        with self._cond:
            reopened = self._state != CLOSED
            self._state = CLOSED
            self._failures = 0
            self._cooldown = self._base
            self._probing = False
            if reopened:
                self._cond.notify_all()

    def failed(self) -> None:
        with self._cond:
            self._failures += 1
            if self._state == HALF_OPEN or (
                self._state == CLOSED and self._failures >= self._threshold
            ):
                if self._state == HALF_OPEN:
                    self._cooldown = min(self._max, self._cooldown * 2)
                self._state = OPEN
                self._probing = False
                self._reopen_at = self._clock() + self._cooldown
                self.opened += 1
                self._cond.notify_all()

    def hold(self, seconds: float) -> None:
        """Pause every worker for ``seconds`` (a ``Retry-After``)."""
        with self._cond:
            self._hold_until = max(self._hold_until, self._clock() + seconds)

    def wait_time(self) -> float:
        """Clock seconds until the answer of :meth:`permit` may change (0: now)."""
        with self._cond:
            now = self._clock()
            times = []
            if self._hold_until > now:
                times.append(self._hold_until - now)
            if self._state == OPEN:
                times.append(max(0.0, self._reopen_at - now))
            return max(times) if times else 0.0

    def wait(self, timeout: float) -> None:
        """Sleep until the state changes, :meth:`wake` is called, or ``timeout``."""
        with self._cond:
            self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def reset(self) -> None:
        """After a fork: a fresh lock (the parent's may have been held)."""
        self._cond = threading.Condition(threading.Lock())
        self._state = CLOSED
        self._failures = 0
        self._cooldown = self._base
        self._hold_until = 0.0
        self._probing = False
        self.opened = 0
