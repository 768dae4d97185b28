"""Packing encoded lines into datagrams."""

from __future__ import annotations

from ._model import UDP_MAX_DATAGRAM, OversizedLineError, ProtocolError


class Packer:
    """Packs lines into datagrams of at most ``max_size`` bytes, never splitting a line.

    Sending one datagram per metric costs a system call each; the Datadog clients
    measured two to three times the throughput by packing lines up to the transport's
    safe size (:data:`UDP_MAX_DATAGRAM` = 1432 for UDP, :data:`UDS_MAX_DATAGRAM` = 8192
    for a Unix socket). Every line is followed by ``\\n``, the last one too: the
    agent can then be told to drop an unterminated last line
    (``dogstatsd_eol_required``) as a guard against truncated datagrams, and the
    newline counts towards ``max_size``.

    :meth:`add` hands back the datagram that the new line did not fit into, ready to
    send; :meth:`flush` hands back what is pending (call it on a timer and before
    exit). A line that cannot fit even an empty datagram raises
    :class:`OversizedLineError` and leaves the packer unchanged, so the caller can
    count one dropped line and carry on. Not thread-safe: one packer per sending
    thread.
    """

    __slots__ = ("_buffer", "_max_size")

    def __init__(self, max_size: int = UDP_MAX_DATAGRAM) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 2:
            raise ProtocolError(
                f"max_size must be an int of at least 2 bytes (a 1-byte line and its"
                f" newline), got {max_size!r}"
            )
        self._max_size = max_size
        self._buffer = bytearray()

    @property
    def max_size(self) -> int:
        """The largest datagram this packer returns, newlines included."""
        return self._max_size

    @property
    def pending(self) -> int:
        """Bytes waiting in the current, unfinished datagram."""
        return len(self._buffer)

    def add(self, line: bytes) -> bytes | None:
        """Queue ``line`` (without its newline); return a full datagram to send, or None.

        Raises :class:`OversizedLineError` if ``len(line) + 1 > max_size`` and
        :class:`ProtocolError` if ``line`` contains a newline (it would be read as two
        lines); an empty line is ignored.
        """
        size = len(line) + 1
        buffer = self._buffer
        if size > self._max_size:
            raise OversizedLineError(size - 1, self._max_size)
        if b"\n" in line:
            raise ProtocolError("a line may not contain a newline: encode one item per line")
        if size == 1:
            return None
        if len(buffer) + size > self._max_size:
            datagram = bytes(buffer)
            buffer.clear()
            buffer += line
            buffer += b"\n"
            return datagram
        buffer += line
        buffer += b"\n"
        return None

    def flush(self) -> bytes | None:
        """The pending datagram, if any, leaving the packer empty."""
        if not self._buffer:
            return None
        datagram = bytes(self._buffer)
        self._buffer.clear()
        return datagram
