"""Datagram transports: `UDPTransport` (IPv4 and IPv6) and `UnixDatagramTransport`.

One packet is one datagram, written with one ``send()`` on a *connected*, non-blocking
socket. Connecting does the address lookup once (not per packet, as ``sendto()`` with
a name would) and lets the kernel report an ICMP "port unreachable" as
``ECONNREFUSED`` on a later send, which is how we learn the agent is gone.

Non-blocking because the sender thread must never stall on a full socket buffer:
``EAGAIN``/``ENOBUFS`` (the buffer is full) and ``EMSGSIZE`` drop that one packet and
keep the socket (a *soft* failure, reason ``"send"``). Every other error is *hard*: the
socket is closed and a back-off starts; the next attempt resolves the name again, so
an agent whose address changed is found again. Resolution is lazy (first ``send()``),
never in the constructor, which may run on an application's import path.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable

from ._base import (
    Address,
    SocketTransport,
    check_host_port,
    check_packet_size,
    check_path,
    format_host,
    resolve,
)

#: The largest UDP payload that fits in one 1500-byte Ethernet frame whatever the IP
#: header (1500 - the largest IPv4 header, 60 - UDP's 8): bigger packets are fragmented,
#: and one lost fragment loses the whole packet.
DEFAULT_UDP_PACKET_SIZE = 1432
#: Unix sockets do not fragment; 8 KiB is what the Datadog Agent reads by default.
DEFAULT_UNIX_PACKET_SIZE = 8192
#: The largest UDP payload over IPv4 (65535 - IPv4 20 - UDP 8).
MAX_UDP_PACKET_SIZE = 65507
#: A datagram socket's send buffer is raised to at least this (bursts of packets).
MIN_SEND_BUFFER = 32 * 1024

#: Errors that say "not now" about this packet, not "this socket is broken".
_SOFT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EMSGSIZE, errno.EINTR}
)


def _datagram_socket(family: int, address: Address) -> socket.socket:
    """A non-blocking datagram socket connected to ``address``, or an ``OSError``."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < MIN_SEND_BUFFER:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MIN_SEND_BUFFER)
        except OSError:
            pass  # capped by the system (net.core.wmem_max) or not supported: keep it
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _DatagramTransport(SocketTransport):
    __slots__ = ()

    def _deliver(self, packet: bytes) -> bool:
        sock = self._connected()
        try:
            sent = sock.send(packet)
        except OSError as exc:
            if exc.errno in _SOFT_ERRNOS:
                raise self._soft_failure("send", "datagram dropped", exc) from exc
            raise self._hard_failure("send", "send failed", exc) from exc
        if sent != len(packet):  # datagrams are all or nothing; be sure anyway
            raise self._soft_failure(
                "send", "datagram truncated", OSError(f"{sent} of {len(packet)} bytes sent")
            )
        return True


class UDPTransport(_DatagramTransport):
    """DogStatsD over UDP to ``host:port``; ``host`` is a name, an IPv4 or an IPv6 literal.

    The name is resolved on the first ``send()`` and again on the first attempt after a
    hard failure; every address it resolves to is tried in turn, the one that failed
    last going last (``localhost`` is often ``::1`` and ``127.0.0.1``, and an agent may
    listen on only one of them).

    A full socket buffer (``EAGAIN``, ``ENOBUFS``) or ``EMSGSIZE`` drops just that packet
    (reason ``"send"``, same socket, no back-off); any other error (``ECONNREFUSED``: no
    agent on that port) closes the socket and backs off before resolving again.
    """

    __slots__ = ("_host", "_port")

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_packet_size: int = DEFAULT_UDP_PACKET_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host, self._port = check_host_port(host, port)
        check_packet_size(max_packet_size, MAX_UDP_PACKET_SIZE)
        super().__init__(f"udp://{format_host(self._host)}:{self._port}", max_packet_size, clock)

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def _open(self) -> socket.socket:
        try:
            infos = resolve(self._host, self._port, socket.SOCK_DGRAM, self._avoid)
        except (OSError, ValueError) as exc:  # gaierror, herror; a bad IDNA name
            raise self._hard_failure("resolve", f"cannot resolve {self._host!r}", exc) from exc
        failure: OSError = OSError(f"{self._host!r} resolved to no address")
        for family, _, _, _, address in infos:
            try:
                sock = _datagram_socket(family, address)
            except OSError as exc:  # e.g. no IPv6 route: try the next address
                failure = exc
                continue
            self._peer = address
            return sock
        raise self._hard_failure("connect", "cannot open a socket", failure) from failure


class UnixDatagramTransport(_DatagramTransport):
    """DogStatsD over a Unix datagram socket (``unix://`` or ``unixgram://`` URLs).

    Connecting fails (reason ``"connect"``) while nothing is bound at ``path``; a
    receiver that went away shows up as a hard send failure and a new receiver at the
    same path is connected to after the back-off. A relative ``path`` is made absolute
    at construction, so that a later ``chdir()`` does not move the destination.
    """

    __slots__ = ("_path",)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_packet_size: int = DEFAULT_UNIX_PACKET_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = os.path.abspath(check_path(path))
        check_packet_size(max_packet_size)
        super().__init__(f"unixgram://{self._path}", max_packet_size, clock)

    @property
    def path(self) -> str:
        return self._path

    def _open(self) -> socket.socket:
        try:
            sock = _datagram_socket(socket.AF_UNIX, self._path)
        except OSError as exc:
            raise self._hard_failure("connect", "cannot connect", exc) from exc
        self._peer = self._path
        return sock
