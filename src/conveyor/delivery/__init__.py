"""Reliable delivery of events and errors: :class:`Dispatcher`, its :class:`Retry`
policy, its books, and :func:`capture_exceptions`.

::

    from conveyor import Dispatcher, HTTPTransport, Retry

    events = Dispatcher(HTTPTransport("https://api.example.com/v1/events"), max_workers=8)
    events.submit({"type": "order", "id": 42})     # never blocks (unless overflow="block")
    events.flush(timeout=10.0)
    events.statistics()                            # delivered, rejected, dropped, pending

Built on :mod:`conveyor.ring` and :mod:`conveyor.lifecycle`; see ``docs/delivery.md``.
This package does not import :mod:`conveyor.client` nor urllib3.
"""

from ._books import DROP_REASONS, DeliveryStatistics
from ._breaker import CircuitBreaker
from ._capture import capture_exceptions, exception_fields
from ._dispatcher import Dispatcher, Overflow
from ._protocol import BatchTransport, Outcome
from ._retry import Retry, is_retryable, parse_retry_after

__all__ = [
    "DROP_REASONS",
    "BatchTransport",
    "CircuitBreaker",
    "DeliveryStatistics",
    "Dispatcher",
    "Outcome",
    "Overflow",
    "Retry",
    "capture_exceptions",
    "exception_fields",
    "is_retryable",
    "parse_retry_after",
]
