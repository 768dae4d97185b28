"""Stream transports: `UnixStreamTransport` (length-prefixed) and `TCPTransport` (lines).

A stream has no packet boundaries, so each packet is framed: the Datadog Agent's
``unixstream`` listener reads a 4-byte little-endian length and then that many bytes;
a StatsD TCP listener reads newline-terminated lines.

The invariant: a live connection only ever carries whole frames. A frame is written
with one ``sendall()`` bounded by ``send_timeout``; if that fails or times out part-way
(a prefix may already be in the kernel's buffer), the socket is closed at once, so the
partial frame dies with its connection and the next packet starts a new connection at
a frame boundary. The receiver discards the fragment it got before the end of stream.

Connecting is bounded by ``connect_timeout``; every failure (resolution, connection,
write) starts an exponential back-off during which ``send()`` fails fast with reason
``"backing_off"``, so an agent that is down costs one short attempt per period, not
one blocked sender per packet.

Before each write the socket is polled (no wait) for a hang-up: an agent that closed
the connection (restart, idle timeout) would otherwise swallow the next packet, which
a stream write accepts into the local buffer before the reset comes back. A DogStatsD
listener never writes to us, so "readable" means "end of stream".
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from ._base import (
    Address,
    SocketTransport,
    check_host_port,
    check_packet_size,
    check_path,
    check_timeout,
    format_host,
    resolve,
)
from ._datagram import DEFAULT_UNIX_PACKET_SIZE

#: TCP packets default to the Unix size: a stream does not fragment datagrams.
DEFAULT_TCP_PACKET_SIZE = DEFAULT_UNIX_PACKET_SIZE
DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_SEND_TIMEOUT = 1.0

_LENGTH = struct.Struct("<I")
#: EPIPE instead of a SIGPIPE, even if the application restored the default handler.
_SEND_FLAGS: int = getattr(socket, "MSG_NOSIGNAL", 0)
_PEEK_FLAGS: int = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_HAS_POLL = hasattr(select, "poll")


class _StreamTransport(SocketTransport):
    __slots__ = ("_connect_timeout", "_poller", "_send_timeout")

    _WAKE_ON_CLOSE = True

    def __init__(
        self,
        url: str,
        max_packet_size: int,
        clock: Callable[[], float],
        connect_timeout: float,
        send_timeout: float,
    ) -> None:
        self._connect_timeout = check_timeout("connect_timeout", connect_timeout)
        self._send_timeout = check_timeout("send_timeout", send_timeout)
        self._poller: select.poll | None = None
        super().__init__(url, max_packet_size, clock)

    def _frame(self, packet: bytes) -> bytes:
        """The bytes to write for ``packet``; empty if there is nothing to write."""
        raise NotImplementedError

    def _deliver(self, packet: bytes) -> bool:
        frame = self._frame(packet)
        if not frame:
            return False
        if self._sock is not None and self._hung_up(self._sock):
            self._drop_socket()  # reconnect below, within this send
        sock = self._connected()
        try:
            sock.sendall(frame, _SEND_FLAGS)
        except OSError as exc:  # includes TimeoutError; a partial frame may be out
            raise self._hard_failure("send", "send failed, connection closed", exc) from exc
        return True

    def _hung_up(self, sock: socket.socket) -> bool:
        """True if the peer closed or reset the connection (checked without waiting)."""
        poller = self._poller
        if poller is None:
            return False
        try:
            if not poller.poll(0):
                return False
            return not sock.recv(1, _PEEK_FLAGS)  # b"": end of stream
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except OSError:  # ECONNRESET and friends
            return True

    def _connect(self, sock: socket.socket, address: Address, timeout: float) -> None:
        """Connect ``sock`` within ``timeout`` and make it ready for framed writes."""
        sock.settimeout(timeout)
        sock.connect(address)
        sock.settimeout(self._send_timeout)
        self._peer = address
        if _HAS_POLL:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            self._poller = poller

    def _drop_socket(self) -> None:
        self._poller = None
        super()._drop_socket()


class UnixStreamTransport(_StreamTransport):
    """DogStatsD over a Unix stream socket (``unixstream://`` URLs).

    Each packet goes out as a 4-byte little-endian length followed by the packet, the
    framing of the Datadog Agent's ``dogstatsd_stream_socket``. A relative ``path`` is
    made absolute at construction.
    """

    __slots__ = ("_path",)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_packet_size: int = DEFAULT_UNIX_PACKET_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = os.path.abspath(check_path(path))
        check_packet_size(max_packet_size, 0xFFFFFFFF)
        super().__init__(
            f"unixstream://{self._path}", max_packet_size, clock, connect_timeout, send_timeout
        )

    @property
    def path(self) -> str:
        return self._path

    def _frame(self, packet: bytes) -> bytes:
        return _LENGTH.pack(len(packet)) + packet

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(sock, self._path, self._connect_timeout)
        except OSError as exc:
            sock.close()
            raise self._hard_failure("connect", "cannot connect", exc) from exc
        return sock


class TCPTransport(_StreamTransport):
    """DogStatsD (or plain StatsD) over TCP: a packet is newline-separated lines.

    On the wire every packet ends with exactly one newline (added if missing, extra
    ones dropped), so consecutive packets never run into one line or leave empty lines.
    The host is resolved lazily like :class:`UDPTransport`'s; each resolved address is
    tried in turn, all within one ``connect_timeout``.
    """

    __slots__ = ("_host", "_port")

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_packet_size: int = DEFAULT_TCP_PACKET_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host, self._port = check_host_port(host, port)
        check_packet_size(max_packet_size)
        super().__init__(
            f"tcp://{format_host(self._host)}:{self._port}",
            max_packet_size,
            clock,
            connect_timeout,
            send_timeout,
        )

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def _frame(self, packet: bytes) -> bytes:
        if not packet.endswith(b"\n"):
            return packet + b"\n"
        if not packet.endswith(b"\n\n"):
            return packet
        body = packet.rstrip(b"\n")
        return body + b"\n" if body else b""

    def _open(self) -> socket.socket:
        try:
            infos = resolve(self._host, self._port, socket.SOCK_STREAM, self._avoid)
        except (OSError, ValueError) as exc:  # gaierror, herror; a bad IDNA name
            raise self._hard_failure("resolve", f"cannot resolve {self._host!r}", exc) from exc
        failure: OSError = OSError(f"{self._host!r} resolved to no address")
        # Real time, not the back-off clock: this bounds how long the sender blocks.
        deadline = time.monotonic() + self._connect_timeout
        for family, kind, proto, _, address in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = TimeoutError(f"connect_timeout ({self._connect_timeout} s) ran out")
                break
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:  # e.g. the kernel has no IPv6
                failure = exc
                continue
            try:
                self._connect(sock, address, remaining)
                # A frame is written at once: Nagle's algorithm would only add delay.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            return sock
        raise self._hard_failure("connect", "cannot connect", failure) from failure
