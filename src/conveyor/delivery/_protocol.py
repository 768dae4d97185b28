"""What a dispatcher needs from a transport: encode one item, send a batch, and say
how it went. :class:`conveyor.transport.HTTPTransport` is the one that ships; a test
or an application can bring its own (anything with these members)."""

from __future__ import annotations

from typing import Protocol


class Outcome(Protocol):
    """How one request went. ``status`` is None when no response came back (connection
    refused or reset, timeout, TLS failure): a transient failure."""

    @property
    def status(self) -> int | None: ...

    @property
    def reason(self) -> str:
        """A short reason to count by: ``"400 Bad Request"``, ``"connect"``, ``"timeout"``."""
        ...

    @property
    def retry_after(self) -> str | None:
        """The raw ``Retry-After`` header, if any."""
        ...


class BatchTransport(Protocol):
    """Sends batches of encoded items; never raises for a network problem."""

    @property
    def url(self) -> str:
        """The destination, safe to log (no credentials)."""
        ...

    @property
    def max_batch_items(self) -> int: ...

    @property
    def max_batch_bytes(self) -> int: ...

    def encode(self, key: str, item: object) -> bytes:
        """One item as it travels, carrying its idempotency ``key``; raises
        ``TypeError``/``ValueError`` if it cannot be encoded."""
        ...

    def send(self, encoded: list[bytes], timeout: float | None = None) -> Outcome:
        """Send one batch (each element from :meth:`encode`) and report the outcome;
        ``timeout`` (seconds) caps the whole request when given (at exit)."""
        ...

    def close(self) -> None: ...

    def reset_after_fork(self) -> None:
        """In a forked child: abandon the parent's connections (do not close them)."""
        ...
