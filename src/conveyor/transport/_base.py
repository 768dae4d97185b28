"""`Transport`, the interface, and the socket bookkeeping every transport shares.

Threading. A transport has one writer: the sender thread is the only caller of
``send()``. ``close()`` may come from any thread at any time (shutdown, atexit): it
marks the transport closed, wakes a ``send()`` blocked on a stream socket by shutting
the socket down, then waits for that ``send()`` to let go of the socket before it
closes it. It never closes a socket under a running system call, because the file
descriptor number could be reused by an unrelated ``open()`` in the meantime and the
late write would land there. ``statistics()`` may be read from any thread.

Fork. A child process must not write on its parent's stream connection (the two
processes' frames would interleave on one connection). Every call compares the pid
with the one the socket was made in; in a forked child the inherited socket is
abandoned (only the child's copy of the descriptor is closed: no ``shutdown()``, which
would cut the parent's connection too), the counters start again from zero, and the
next ``send()`` opens a socket of the child's own. This does not rely on fork hooks, so
it also works when a server forks from C without running them (uWSGI).
"""

from __future__ import annotations

import abc
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from ._backoff import Backoff
from ._errors import Reason, TransportError
from ._stats import TransportStatistics

_T = TypeVar("_T", bound="Transport")

#: A socket address: a (host, port[, flow, scope]) tuple or a Unix path.
Address = tuple[Any, ...] | str
#: One ``socket.getaddrinfo()`` result: family, kind, protocol, canonical name, address.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]


class Transport(abc.ABC):
    """Writes packets (bytes already packed by the caller) to one destination.

    ``send(packet)`` either hands the whole packet to the operating system or raises
    :class:`TransportError`, whose ``reason`` the caller counts; it never raises
    anything else for a network problem. A transport is not thread-safe beyond one
    sending thread plus ``close()``/``statistics()`` from anywhere.
    """

    __slots__ = ()

    @property
    @abc.abstractmethod
    def max_packet_size(self) -> int:
        """The largest packet ``send()`` accepts, in bytes (framing not included)."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The destination as a URL that :func:`transport_from_url` accepts."""

    @abc.abstractmethod
    def send(self, packet: bytes) -> None:
        """Write one packet, or raise :class:`TransportError`."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the socket; later sends fail with reason ``"closed"``. Idempotent."""

    @abc.abstractmethod
    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_packet_size(value: int, limit: int | None = None) -> int:
    """Return ``value`` if it is a usable ``max_packet_size``; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_packet_size must be an int, not {type(value).__name__}")
    if value < 1 or (limit is not None and value > limit):
        bound = f"between 1 and {limit}" if limit is not None else "at least 1"
        raise ValueError(f"max_packet_size must be {bound}, got {value}")
    return value


def check_timeout(name: str, value: float) -> float:
    """Return ``value`` as a float if it is a positive, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not 0 < value < float("inf"):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds (the sender thread "
            f"must never block for good), got {value}"
        )
    return float(value)


def describe(exc: BaseException) -> str:
    """An OS error as a short phrase for a message."""
    return str(exc) or type(exc).__name__


class SocketTransport(Transport):
    """The state machine every concrete transport shares.

    Subclasses provide ``_open()`` (make a connected socket, or raise through
    :meth:`_hard_failure`) and ``_deliver()`` (write one packet on ``self._sock``). This
    class does everything around them: the order of checks, the back-off, the
    counters, the lock, fork detection and ``close()``.

    Failures come in two kinds. A *hard* one (resolution, connection, a write refused
    or reset) closes the socket, so that the next attempt resolves and connects again,
    and opens a back-off period. A *soft* one (a datagram socket's buffer is full) drops
    the packet but keeps the socket: the destination is fine, only busy.
    """

    __slots__ = (
        "_avoid",
        "_backoff",
        "_bytes_sent",
        "_closed",
        "_connections",
        "_errors",
        "_lock",
        "_max_packet_size",
        "_packets_sent",
        "_peer",
        "_pid",
        "_sock",
        "_url",
    )

    #: Stream sockets can block in ``send()``; ``close()`` shuts them down to wake it.
    _WAKE_ON_CLOSE: ClassVar[bool] = False

    def __init__(self, url: str, max_packet_size: int, clock: Callable[[], float]) -> None:
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        self._url = url
        self._max_packet_size = max_packet_size
        self._backoff = Backoff(clock)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._sock: socket.socket | None = None
        # The address the socket is connected to, and one to try last next time.
        self._peer: Address | None = None
        self._avoid: Address | None = None
        self._closed = False
        self._packets_sent = 0
        self._bytes_sent = 0
        self._errors: dict[str, int] = {}
        self._connections = 0

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    @property
    def url(self) -> str:
        return self._url

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def send(self, packet: bytes) -> None:
        """Write ``packet`` whole, or raise :class:`TransportError` (counted by reason).

        Checked in this order: closed, too large, empty (a no-op: nothing is sent or
        counted), backing off; then the socket is opened if needed and written to.
        """
        self._check_fork()
        with self._lock:
            try:
                self._send_locked(packet)
            except TransportError as error:
                self._errors[error.reason] = self._errors.get(error.reason, 0) + 1
                raise

    def _send_locked(self, packet: bytes) -> None:
        if self._closed:
            raise TransportError("closed", f"{self._url}: the transport is closed")
        size = len(packet)
        if size > self._max_packet_size:
            raise TransportError(
                "too_large",
                f"{self._url}: a {size}-byte packet exceeds max_packet_size "
                f"({self._max_packet_size}); it was not sent",
            )
        if not size:
            return
        if not self._backoff.ready():
            raise TransportError(
                "backing_off",
                f"{self._url}: not retrying for another {self._backoff.remaining():.3f} s "
                f"after {self._backoff.failures} consecutive failure(s), the last of them "
                f"{self._backoff.last_reason!r}",
            )
        try:
            if not self._deliver(packet):
                return
        except TransportError as error:
            if self._closed and error.reason != "closed":  # close() cut the write short
                self._drop_socket()
                raise TransportError(
                    "closed", f"{self._url}: the transport was closed during the send"
                ) from error
            raise
        self._backoff.succeeded()
        self._packets_sent += 1
        self._bytes_sent += size

    def _connected(self) -> socket.socket:
        """The open socket, opening one (resolve, connect) if there is none."""
        sock = self._sock
        if sock is None:
            sock = self._open()
            if self._closed:  # close() ran while we were connecting
                sock.close()
                raise TransportError("closed", f"{self._url}: the transport was closed")
            self._sock = sock
            self._connections += 1
        return sock

    @abc.abstractmethod
    def _open(self) -> socket.socket:
        """Make a connected socket (and set ``self._peer``) or raise a hard failure."""

    @abc.abstractmethod
    def _deliver(self, packet: bytes) -> bool:
        """Write ``packet``; return False if there turned out to be nothing to write."""

    def _hard_failure(self, reason: Reason, what: str, exc: BaseException) -> TransportError:
        """Close the socket, start (or extend) the back-off; return the error to raise."""
        if self._peer is not None:
            self._avoid = self._peer
        self._drop_socket()
        self._backoff.failed(reason)
        return self._error(reason, what, exc)

    def _soft_failure(self, reason: Reason, what: str, exc: BaseException) -> TransportError:
        """Keep the socket and the back-off state; return the error to raise."""
        return self._error(reason, what, exc)

    def _error(self, reason: Reason, what: str, exc: BaseException) -> TransportError:
        errno = exc.errno if isinstance(exc, OSError) else None
        return TransportError(reason, f"{self._url}: {what}: {describe(exc)}", errno=errno)

    def _drop_socket(self) -> None:
        sock, self._sock = self._sock, None
        self._peer = None
        if sock is not None:
            sock.close()

    def close(self) -> None:
        """Close for good. Safe from any thread, any number of times.

        A ``send()`` blocked on a stream socket is woken (``shutdown()``) and fails
        with reason ``"closed"``; ``close()`` waits for it to let go of the socket,
        which takes at most the transport's connect or send timeout.
        """
        self._check_fork()
        self._closed = True
        sock = self._sock
        if sock is not None and self._WAKE_ON_CLOSE:
            with contextlib.suppress(OSError):  # not connected: nothing to wake
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._drop_socket()

    def statistics(self) -> TransportStatistics:
        self._check_fork()
        return TransportStatistics(
            packets_sent=self._packets_sent,
            bytes_sent=self._bytes_sent,
            errors=self._errors.copy(),
            reconnects=max(0, self._connections - 1),
        )

    def _check_fork(self) -> None:
        pid = os.getpid()
        if pid == self._pid:
            return
        # A forked child. The parent's lock may have been held by its sender thread,
        # which does not exist here: take a fresh one.
        self._pid = pid
        self._lock = threading.RLock()
        self._drop_socket()  # closes the child's copy of the descriptor only
        self._avoid = None
        self._backoff.succeeded()
        self._packets_sent = self._bytes_sent = self._connections = 0
        self._errors = {}


def format_host(host: str) -> str:
    """``host`` as it appears in a URL: IPv6 literals go in brackets."""
    return f"[{host}]" if ":" in host else host


def check_host_port(host: str, port: int) -> tuple[str, int]:
    """Validate a host and port; strip brackets from an IPv6 literal."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or host != host.strip():
        raise ValueError(f"host must be a non-empty name or address, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def check_path(path: str | os.PathLike[str]) -> str:
    """Validate a Unix socket path (the kernel's length limit is checked at connect)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"path must be a non-empty file system path, got {path!r}")
    return path


def resolve(host: str, port: int, kind: socket.SocketKind, avoid: Address | None) -> list[AddrInfo]:
    """Resolve ``host`` (any family); ``avoid``, the address that failed last, goes last.

    A name such as ``localhost`` often resolves to ``::1`` and ``127.0.0.1`` while the
    agent listens on one of them only; moving the failed address to the back makes the
    next attempt try the other.
    """
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, kind)
    return sorted(infos, key=lambda info: info[4] == avoid)
