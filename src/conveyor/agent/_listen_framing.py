"""Framers: turn a stream's bytes back into the packets the client wrote.

A stream has no packet boundaries, so the client frames each packet (see
:mod:`conveyor.transport`): over a Unix stream a 4-byte little-endian length then the
packet (the Datadog Agent's ``unixstream`` format), over TCP newline-terminated lines.
A framer is fed whatever one ``recv()`` returned, in order, and gives back every
packet that is now complete; a partial frame waits for the rest. At the end of the
stream, ``finish()`` gives back what the end completes (a last line needs no newline)
or counts the fragment left over.

Everything is bounded: a frame longer than ``max_size`` is not buffered until it ends
(a client that never sends the newline would otherwise grow the buffer for ever,
`open-telemetry/opentelemetry-collector-contrib#50123`); the framer raises
:class:`FramingError` and the connection is closed, because after a bad length there
is no way to find the next frame boundary again.

A framer belongs to one connection and is used by one thread at a time; it does not
lock.
"""

from __future__ import annotations

import struct

_LENGTH = struct.Struct("<I")

#: The largest frame a stream listener accepts by default: a packet from conveyor's
#: client is at most 8 KiB (``DEFAULT_UNIX_PACKET_SIZE``); the Datadog clients' UDS
#: packets too. Larger client buffers are allowed with room to spare.
DEFAULT_MAX_FRAME = 64 * 1024


class FramingError(Exception):
    """The stream cannot be framed any further; ``reason`` is the counted name."""

    def __init__(self, reason: str, message: str, packets: list[bytes] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        #: The packets completed before the error, in order: they are good, deliver them.
        self.packets: list[bytes] = packets or []


class Framer:
    """Base class: ``feed(data)`` returns the packets completed by ``data``."""

    __slots__ = ("_buffer", "_max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self._max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a frame whose end has not arrived yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def finish(self, *, eof: bool) -> list[bytes]:
        """The stream is over (``eof``: the client closed it; else the listener did):
        the packets that what is still buffered completes, or :class:`FramingError` if
        it is a fragment, so that it is counted rather than dropped unseen."""
        raise NotImplementedError


class LengthFramer(Framer):
    """4-byte little-endian length, then that many bytes; one packet per frame.

    A zero length is an empty frame and yields nothing (it is harmless, and some
    clients use it as a keep-alive); a length above ``max_size`` raises
    :class:`FramingError` with reason ``"frame_too_large"``.
    """

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data  # the common case: a read that starts at a frame boundary
        packets: list[bytes] = []
        position = 0
        end = len(view)
        limit = self._max_size
        while end - position >= 4:
            (length,) = _LENGTH.unpack_from(view, position)
            if length > limit:
                raise FramingError(
                    "frame_too_large",
                    f"a frame announces {length} bytes, more than the {limit} allowed",
                    packets,
                )
            stop = position + 4 + length
            if stop > end:
                break
            if length:
                packets.append(bytes(view[position + 4 : stop]))
            position = stop
        if view is buffer:
            del buffer[:position]
        elif position < end:
            buffer += view[position:]
        return packets

    def finish(self, *, eof: bool) -> list[bytes]:
        held = len(self._buffer)
        self._buffer.clear()
        if held:
            raise FramingError(
                "truncated_frame", f"the stream ended inside a frame ({held} bytes of it came)"
            )
        return []


class LineFramer(Framer):
    """Newline-terminated lines; every complete line of a read goes out in one packet.

    The packet is the lines joined by ``\\n`` without the final newline, as a datagram
    carrying several lines would be. A partial last line waits for the rest; a line
    longer than ``max_size`` (complete or not) raises :class:`FramingError` with reason
    ``"line_too_long"``.
    """

    __slots__ = ()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        last = data.rfind(b"\n")
        if last < 0:
            buffer += data
            if len(buffer) > self._max_size:
                raise self._too_long(len(buffer))
            return []
        if buffer:
            head = bytes(buffer) + data[:last]
            buffer.clear()
        else:
            head = data[:last]
        tail = data[last + 1 :]
        limit = self._max_size
        # Every line must fit; look for the culprit only when the chunk could hide one.
        if len(head) > limit:
            lines = head.split(b"\n")
            for index, line in enumerate(lines):
                if len(line) > limit:
                    good = b"\n".join(lines[:index]).strip(b"\n")
                    raise self._too_long(len(line), [good] if good else [])
        if len(tail) > limit:
            head = head.strip(b"\n")
            raise self._too_long(len(tail), [head] if head else [])
        buffer += tail
        head = head.strip(b"\n")
        return [head] if head else []

    def finish(self, *, eof: bool) -> list[bytes]:
        """At end of stream the last line needs no newline (``printf 'a:1|c' | nc``);
        a line cut off by the listener closing the connection is counted."""
        tail = bytes(self._buffer)
        self._buffer.clear()
        if not tail.strip(b"\n"):
            return []
        if eof:
            return [tail]
        raise FramingError(
            "truncated_line", f"the connection was closed inside a line ({len(tail)} bytes)"
        )

    def _too_long(self, size: int, packets: list[bytes] | None = None) -> FramingError:
        return FramingError(
            "line_too_long",
            f"a line of {size}+ bytes, more than the {self._max_size} allowed",
            packets,
        )
