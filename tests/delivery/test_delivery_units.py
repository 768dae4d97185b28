"""The small parts on their own: the retry policy, Retry-After, the breaker, redaction."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from delivery_support import FakeClock

from conveyor.delivery import CircuitBreaker, Retry, is_retryable, parse_retry_after
from conveyor.delivery._breaker import GO, PROBE, WAIT
from conveyor.transport._http import redact


def test_full_jitter_backoff_doubles_and_is_capped() -> None:
    retry = Retry(initial=0.5, maximum=30.0)
    assert [retry.ceiling(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert retry.backoff(3, uniform=0.0) == 0.0
    assert retry.backoff(3, uniform=0.5) == 1.0
    assert all(0 <= retry.backoff(10) <= 30.0 for _ in range(1000))
    with pytest.raises(ValueError):
        Retry(initial=2.0, maximum=1.0)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (None, True),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
        (599, True),
        (400, False),
        (401, False),
        (404, False),
        (413, False),
        (200, False),
    ],
)
def test_what_is_retried(status: int | None, retryable: bool) -> None:
    assert is_retryable(status) is retryable


def test_retry_after_seconds_and_dates() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_the_breaker_opens_after_the_threshold_and_probes_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock, threshold=2, cooldown=10.0, max_cooldown=40.0)
    breaker.failed()
    assert breaker.permit() == GO
    breaker.failed()
    assert breaker.state == "open" and breaker.permit() == WAIT
    clock.advance(10.0)
    assert breaker.permit() == PROBE and breaker.permit() == WAIT  # one probe at a time
    breaker.failed()  # the probe failed: open for twice as long
    clock.advance(10.0)
    assert breaker.permit() == WAIT
    clock.advance(10.0)
    assert breaker.permit() == PROBE
    breaker.unused_probe()
    assert breaker.permit() == PROBE
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.permit() == GO


def test_a_hold_pauses_without_opening() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(clock)
    breaker.hold(5.0)
    assert breaker.permit() == WAIT and breaker.state == "closed"
    assert breaker.wait_time() == 5.0
    clock.advance(5.0)
    assert breaker.permit() == GO


def test_urls_are_redacted() -> None:
    assert redact("https://user:pw@api.example.com:8443/v1/e?key=s3cret#x") == (
        "https://api.example.com:8443/v1/e?<redacted>"
    )
    assert redact("http://[::1]:80/") == "http://[::1]:80/"
