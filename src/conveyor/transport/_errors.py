"""`TransportError`: the one exception a transport raises, and the reasons it gives.

The sender thread counts failures rather than handling each kind differently, so a
failure carries a short, fixed ``reason`` to count by; the message and the chained
``OSError`` (``__cause__``) are for people reading logs.
"""

from __future__ import annotations

from typing import Literal

Reason = Literal["resolve", "connect", "send", "too_large", "closed", "backing_off"]

#: Every reason a :class:`TransportError` can give, so a caller can set up its counters.
REASONS: tuple[Reason, ...] = (
    "resolve",
    "connect",
    "send",
    "too_large",
    "closed",
    "backing_off",
)


class TransportError(Exception):
    """A packet was not delivered; ``reason`` says why in one word.

    * ``"resolve"``: the host name did not resolve (nothing was sent);
    * ``"connect"``: no socket could be connected to the destination;
    * ``"send"``: the write failed (buffer full, refused, reset, timed out...);
    * ``"too_large"``: the packet exceeds ``max_packet_size`` and was not attempted;
    * ``"closed"``: the transport was closed (before or during the send);
    * ``"backing_off"``: a recent failure means no attempt is made yet (no syscall).

    ``errno`` is the operating system's error number when there was one.
    """

    def __init__(self, reason: Reason, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.errno = errno

    def __reduce__(self) -> tuple[object, ...]:
        # The default reduction calls cls(*args), which would lose ``reason``.
        return (_rebuild, (self.reason, str(self), self.errno))

    def __repr__(self) -> str:
        return f"TransportError({self.reason!r}, {str(self)!r})"


def _rebuild(reason: Reason, message: str, errno: int | None) -> TransportError:
    return TransportError(reason, message, errno=errno)
