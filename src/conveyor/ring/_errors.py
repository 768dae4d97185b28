"""The ring's exceptions: each names what went wrong and what to do about it."""

from __future__ import annotations


class RingError(Exception):
    """Base class of every error raised by :mod:`conveyor.ring`."""


class GraphError(RingError):
    """The sequence graph is not a valid cycle from a producer back to itself.

    Raised when linking (``then``, ``FanOut.and_``) would make an invalid graph, and
    when a sequence whose graph was never closed is asked for a cursor: without the
    loop-back a producer could overwrite slots that consumers are still reading.
    """


class CursorError(RingError, ValueError):
    """``done(cursor)`` was called with a cursor the caller does not hold."""


class RingTimeoutError(RingError, TimeoutError):
    """A blocking wait for a cursor ran out of time."""


class AlertedError(RingError):
    """The wait strategy was alerted (the pipeline is shutting down) during a wait."""
