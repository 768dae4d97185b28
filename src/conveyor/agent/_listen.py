"""Listeners: sockets that receive DogStatsD packets and hand each one to a sink.

A listener delivers *complete packets*: one datagram (UDP, Unix datagram), or one
frame's worth of bytes from a stream (Unix stream: a 4-byte little-endian length then
the packet; TCP: every complete newline-terminated line of a read, joined by ``\\n``).
What a packet means is not the listener's business: the sink gets ``bytes``.

``PacketSink = Callable[[bytes], None]`` is called from the listener's own threads —
a datagram listener's reader thread, or, for a stream listener, the threads of its
connection threading model (see :mod:`conveyor.agent._models`), several at once. The
sink must therefore be **thread-safe and quick**: a sink that blocks stalls reading,
and the kernel then drops datagrams where only ``/proc/net/udp`` sees it. The intended
sink is :class:`~conveyor.agent._listen_ring.PacketRing`, which never blocks and counts
what it has to drop. A sink that raises loses that packet (counted, logged at a
limited rate); the listener carries on.

Defaults are conservative: ``udp://127.0.0.1:8125`` (the loopback only: exposing the
agent to the network is a decision, not a default), Unix sockets created with mode
0600, and a stale socket file from a previous run replaced only if it is a socket
that nobody listens on any more.

The URL forms follow the client's ``DD_DOGSTATSD_URL`` (see
:func:`conveyor.transport.transport_from_url`), plus port 0 (the kernel picks one;
read it back from ``address``)::

    udp://127.0.0.1:8125   udp://[::1]:8125   tcp://127.0.0.1:8125
    unixgram:///run/dsd.socket (also unix://)  unixstream:///run/dsd.stream
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from conveyor import transport
from conveyor._ratelimit import RateLimitedLog
from conveyor.transport import Address

from ._listen_framing import DEFAULT_MAX_FRAME, Framer, LengthFramer, LineFramer
from ._models import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MODEL,
    Model,
    PacketSink,
    StreamBooks,
    StreamConfig,
    log,
    model_class,
)

__all__ = [
    "DEFAULT_URL",
    "Listener",
    "ListenerStatistics",
    "PacketSink",
    "TCPListener",
    "UDPListener",
    "UnixDatagramListener",
    "UnixStreamListener",
    "listen",
]

DEFAULT_PORT = transport.DEFAULT_PORT  # the client's: both ends agree by default
DEFAULT_URL = f"udp://127.0.0.1:{DEFAULT_PORT}"
#: Asked of the kernel for datagram sockets (Datadog suggests 25 MiB for busy hosts;
#: the kernel caps it at ``net.core.rmem_max``, and ``statistics().receive_buffer``
#: says what was granted). A deep buffer is what absorbs a burst while the reader
#: thread waits for the GIL.
DEFAULT_RECEIVE_BUFFER = 8 * 1024 * 1024
#: The largest datagram read whole; a larger Unix datagram is dropped and counted
#: (``"datagram_too_large"``): a truncated packet would parse as wrong metrics.
DEFAULT_MAX_DATAGRAM = 65536
DEFAULT_SOCKET_MODE = 0o600
#: Reads per wake-up before the reader looks at its stop socket again.
_DRAIN_AT_CLOSE = 1 << 20  # bounded: a receive buffer holds far fewer datagrams
_READS_PER_WAKE = 256
_TRUNC_FLAG: int = getattr(socket, "MSG_TRUNC", 0)


@dataclass(frozen=True)
class ListenerStatistics:
    """A snapshot of one listener's books.

    ``packets`` and ``bytes`` count what was received (bytes as read from the socket);
    ``framing_errors`` counts connections closed because their stream could not be
    framed (``"frame_too_large"``, ``"line_too_long"``) and datagrams dropped
    (``"datagram_too_large"``), by reason. ``kernel_drops`` is what the kernel dropped
    for this socket because its receive buffer was full (UDP on Linux, from
    ``/proc/net/udp{,6}``); None where the OS does not say. ``receive_buffer`` is the
    receive buffer the kernel granted (datagram sockets).
    """

    kind: str
    address: str
    model: str | None
    running: bool
    packets: int
    bytes: int
    connections_open: int
    connections_total: int
    connections_refused: int
    idle_closed: int
    framing_errors: Mapping[str, int]
    sink_errors: int
    kernel_drops: int | None
    receive_buffer: int | None
    framing_errors_total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "framing_errors_total", sum(self.framing_errors.values()))
        object.__setattr__(self, "framing_errors", MappingProxyType(dict(self.framing_errors)))


class Listener:
    """Base class: ``start()`` binds and starts the threads, ``close()`` stops them.

    ``close()`` is idempotent, may be called from any thread, and returns only when
    every thread the listener started has ended. A listener is started once.
    """

    kind: ClassVar[str]

    def __init__(self, sink: PacketSink) -> None:
        if not callable(sink):
            raise TypeError(f"sink must be callable, not {type(sink).__name__}")
        self._sink = sink
        self._sock: socket.socket | None = None
        self._state = "new"  # "new" -> "running" -> "closed"
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log)

    @property
    def address(self) -> Address:
        """The bound address once started (the real port if 0 was asked), else the
        configured one: ``(host, port)`` or a socket path."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The URL of :attr:`address`, in the form :func:`listen` takes."""
        address = self.address
        if isinstance(address, str):
            return f"{self.kind}://{address}"
        host, port = address
        return f"{self.kind}://[{host}]:{port}" if ":" in host else f"{self.kind}://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._state == "running"

    def start(self) -> None:
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"{self!r} was already started")
            self._start()
            self._state = "running"

    def close(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            was_running = self._state == "running"
            self._state = "closed"
            if was_running:
                self._close()

    def statistics(self) -> ListenerStatistics:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Listener:
        if self._state == "new":
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, {self._state})"


# -- addresses and sockets ------------------------------------------------------------


def _ip_socket(host: str, port: int, kind: int) -> socket.socket:
    """A socket of the right family, bound to ``host:port`` (the first address found)."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, kind, 0, socket.AI_PASSIVE)
    family, socktype, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return sock
    except BaseException:
        sock.close()
        raise
    finally:
        _ = sockaddr


def _bind_ip(sock: socket.socket, host: str, port: int) -> None:
    infos = socket.getaddrinfo(host, port, sock.family, sock.type, 0, socket.AI_PASSIVE)
    sock.bind(infos[0][4])


def _ip_address(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def _check_stale(path: str, kind: int) -> None:
    """Raise unless ``path`` is free, or a socket file nobody listens on (stale)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a socket; not replacing it (remove it first)", path
        )
    probe = socket.socket(socket.AF_UNIX, kind)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # a socket file left by a process that is gone
    except OSError as error:
        raise OSError(
            error.errno, f"a socket is there and cannot be probed ({error.strerror})", path
        ) from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on this socket", path)


def _bind_unix(sock: socket.socket, path: str, mode: int) -> int:
    """Bind ``sock`` at ``path`` with permission bits ``mode``; return the file's inode.

    The socket is bound in a private (0700) directory next to ``path``, given its
    mode there, and renamed into place, so it is never reachable with the umask's
    looser permissions, and a stale file is replaced atomically. When that longer
    path would not fit a socket address, it binds in place and chmods at once.
    """
    _check_stale(path, sock.type)
    directory = os.path.dirname(path) or "."
    private = tempfile.mkdtemp(prefix=".cvy-", dir=directory)
    try:
        staged = os.path.join(private, "s")
        if len(os.fsencode(staged)) < 100:
            sock.bind(staged)
            os.chmod(staged, mode)
            os.replace(staged, path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            sock.bind(path)
            os.chmod(path, mode)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return os.stat(path).st_ino


def _unlink_if_ours(path: str, inode: int | None) -> None:
    """Remove the socket file unless another listener has replaced it since."""
    if inode is None:
        return
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            os.unlink(path)


def kernel_drops(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for ``sock`` (full receive buffer), from
    ``/proc/net/udp`` or ``/proc/net/udp6``, matched by the socket's inode; None where
    the OS does not say."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    table = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(table, encoding="ascii") as lines:
            next(lines, None)
            for line in lines:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == inode:
                    return int(fields[-1])
    except (OSError, ValueError):
        return None
    return None


def _granted_receive_buffer(sock: socket.socket, wanted: int | None, notes: RateLimitedLog) -> int:
    if wanted is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        except OSError as error:
            notes.warning("rcvbuf", f"could not set SO_RCVBUF to {wanted}: {error}")
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if wanted is not None and granted < wanted:
        notes.warning(
            "rcvbuf",
            f"the kernel granted a {granted}-byte receive buffer instead of {wanted}: "
            "raise net.core.rmem_max to absorb bursts without drops",
        )
    return granted


# -- datagram listeners ---------------------------------------------------------------


class _DatagramListener(Listener):
    """One reader thread per socket; each datagram is one packet."""

    def __init__(
        self,
        sink: PacketSink,
        *,
        receive_buffer: int | None = DEFAULT_RECEIVE_BUFFER,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        super().__init__(sink)
        if receive_buffer is not None and receive_buffer < 1:
            raise ValueError(f"receive_buffer must be >= 1 or None, got {receive_buffer}")
        if max_datagram < 1:
            raise ValueError(f"max_datagram must be >= 1, got {max_datagram}")
        self._receive_buffer_wanted = receive_buffer
        self._receive_buffer: int | None = None
        self._max_datagram = max_datagram
        self._thread: threading.Thread | None = None
        self._stop_r: socket.socket | None = None
        self._stop_w: socket.socket | None = None
        self._packets = 0
        self._bytes = 0
        self._too_large = 0
        self._sink_errors = 0

    def _bind(self) -> socket.socket:
        raise NotImplementedError

    def _start(self) -> None:
        sock = self._bind()
        try:
            self._receive_buffer = _granted_receive_buffer(
                sock, self._receive_buffer_wanted, self._log
            )
            sock.setblocking(False)
            self._stop_r, self._stop_w = socket.socketpair()
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(
            target=self._run, name=f"conveyor-agent-{self.kind}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None and self._stop_r is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop = self._stop_r.fileno()
        size = self._max_datagram
        buffer = bytearray(size)
        view = memoryview(buffer)
        sink = self._sink
        flags = _TRUNC_FLAG if self.kind == "unixgram" else 0
        try:
            while True:
                # At close, first read what the kernel already holds: datagrams sent
                # before the agent was told to stop must reach the final flush.
                stopping = any(fd == stop for fd, _ in poller.poll())
                for _ in range(_DRAIN_AT_CLOSE if stopping else _READS_PER_WAKE):
                    try:
                        n = sock.recv_into(buffer, size, flags)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as error:
                        self._log.warning("recv", f"{self.kind}: recv failed: {error}")
                        break
                    if n > size:
                        self._too_large += 1
                        self._log.warning(
                            "too_large", f"{self.kind}: dropped a {n}-byte datagram (> {size})"
                        )
                        continue
                    self._packets += 1
                    self._bytes += n
                    try:
                        sink(bytes(view[:n]))
                    except Exception as error:
                        self._sink_errors += 1
                        self._log.warning("sink", f"the packet sink raised {error!r}")
                if stopping:
                    return
        except Exception:
            log.exception("%s: the reader thread failed", self.kind)

    def _close(self) -> None:
        if self._stop_w is not None:
            with contextlib.suppress(OSError):
                self._stop_w.send(b"x")
        if self._thread is not None:
            self._thread.join()
        for sock in (self._sock, self._stop_r, self._stop_w):
            if sock is not None:
                sock.close()
        self._after_close()

    def _after_close(self) -> None:
        pass

    def _kernel_drops(self) -> int | None:
        return None

    def statistics(self) -> ListenerStatistics:
        too_large = self._too_large
        return ListenerStatistics(
            kind=self.kind,
            address=self.url,
            model=None,
            running=self.running,
            packets=self._packets,
            bytes=self._bytes,
            connections_open=0,
            connections_total=0,
            connections_refused=0,
            idle_closed=0,
            framing_errors={"datagram_too_large": too_large} if too_large else {},
            sink_errors=self._sink_errors,
            kernel_drops=self._kernel_drops(),
            receive_buffer=self._receive_buffer,
        )


class UDPListener(_DatagramListener):
    """DogStatsD over UDP, IPv4 or IPv6 (by the host's address family).

    ``reuse_port`` sets ``SO_REUSEPORT`` so that several processes can share the port
    (the kernel spreads datagrams over them). Kernel drops come from
    ``/proc/net/udp{,6}``: they are counted even while the reader is busy, which is
    when they happen.
    """

    kind = "udp"

    def __init__(
        self,
        sink: PacketSink,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        reuse_port: bool = False,
        receive_buffer: int | None = DEFAULT_RECEIVE_BUFFER,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        super().__init__(sink, receive_buffer=receive_buffer, max_datagram=max_datagram)
        self._host = host
        self._port = _check_port(port)
        self._reuse_port = reuse_port
        self._drops_last: int | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is not None and self._state == "running":
            return _ip_address(self._sock)
        return self._host, self._port

    def _bind(self) -> socket.socket:
        sock = _ip_socket(self._host, self._port, socket.SOCK_DGRAM)
        try:
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _bind_ip(sock, self._host, self._port)
        except BaseException:
            sock.close()
            raise
        return sock

    def _kernel_drops(self) -> int | None:
        if self._sock is not None and self._state == "running":
            self._drops_last = kernel_drops(self._sock)
        return self._drops_last

    def _close(self) -> None:
        self._kernel_drops()  # the last figure, before the socket (and its row) goes
        super()._close()


class UnixDatagramListener(_DatagramListener):
    """DogStatsD over a Unix datagram socket, created with permission bits ``mode``.

    A sender on a full Unix datagram socket blocks or gets ``EAGAIN``: the kernel
    does not drop on the receiving side, so ``kernel_drops`` is None here (the
    client counts its own refusals).
    """

    kind = "unixgram"

    def __init__(
        self,
        sink: PacketSink,
        path: str,
        *,
        mode: int = DEFAULT_SOCKET_MODE,
        receive_buffer: int | None = DEFAULT_RECEIVE_BUFFER,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        super().__init__(sink, receive_buffer=receive_buffer, max_datagram=max_datagram)
        self._path = _check_path(path)
        self._mode = _check_mode(mode)
        self._inode: int | None = None

    @property
    def address(self) -> str:
        return self._path

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._inode = _bind_unix(sock, self._path, self._mode)
        except BaseException:
            sock.close()
            raise
        return sock

    def _after_close(self) -> None:
        _unlink_if_ours(self._path, self._inode)


# -- stream listeners -----------------------------------------------------------------


class _StreamListener(Listener):
    """Accepts connections and serves them with one of the threading models."""

    def __init__(
        self,
        sink: PacketSink,
        *,
        model: str = DEFAULT_MODEL,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_frame: int = DEFAULT_MAX_FRAME,
        backlog: int = 128,
    ) -> None:
        super().__init__(sink)
        self._model_class = model_class(model)
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout!r}")
        if isinstance(max_connections, bool) or max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if max_frame < 1:
            raise ValueError(f"max_frame must be >= 1, got {max_frame!r}")
        self._idle_timeout = float(idle_timeout)
        self._max_connections = max_connections
        self._max_frame = max_frame
        self._backlog = backlog
        self._books = StreamBooks()
        self._model: Model | None = None

    @property
    def model(self) -> str:
        return self._model_class.name

    def _framer(self) -> Framer:
        raise NotImplementedError

    def _bind(self) -> socket.socket:
        raise NotImplementedError

    def _start(self) -> None:
        sock = self._bind()
        try:
            sock.listen(self._backlog)
            config = StreamConfig(
                sink=self._sink,
                new_framer=self._framer,
                idle_timeout=self._idle_timeout,
                max_connections=self._max_connections,
                name=self.kind,
            )
            self._model = self._model_class(sock, config, self._books)
            self._sock = sock
            self._model.start()
        except BaseException:
            sock.close()
            raise

    def _close(self) -> None:
        if self._model is not None:
            self._model.close()
        if self._sock is not None:
            self._sock.close()
        self._after_close()

    def _after_close(self) -> None:
        pass

    def statistics(self) -> ListenerStatistics:
        books: dict[str, Any] = self._books.snapshot()
        return ListenerStatistics(
            kind=self.kind,
            address=self.url,
            model=self.model,
            running=self.running,
            kernel_drops=None,
            receive_buffer=None,
            **books,
        )


class TCPListener(_StreamListener):
    """DogStatsD over TCP: newline-terminated lines, at most ``max_frame`` bytes each."""

    kind = "tcp"

    def __init__(
        self, sink: PacketSink, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **options: Any
    ) -> None:
        super().__init__(sink, **options)
        self._host = host
        self._port = _check_port(port)

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is not None and self._state == "running":
            return _ip_address(self._sock)
        return self._host, self._port

    def _framer(self) -> Framer:
        return LineFramer(self._max_frame)

    def _bind(self) -> socket.socket:
        sock = _ip_socket(self._host, self._port, socket.SOCK_STREAM)
        try:
            _bind_ip(sock, self._host, self._port)
        except BaseException:
            sock.close()
            raise
        return sock


class UnixStreamListener(_StreamListener):
    """DogStatsD over a Unix stream socket: 4-byte little-endian length frames.

    The socket file is created with permission bits ``mode`` (0600 by default).
    """

    kind = "unixstream"

    def __init__(
        self, sink: PacketSink, path: str, *, mode: int = DEFAULT_SOCKET_MODE, **options: Any
    ) -> None:
        super().__init__(sink, **options)
        self._path = _check_path(path)
        self._mode = _check_mode(mode)
        self._inode: int | None = None

    @property
    def address(self) -> str:
        return self._path

    def _framer(self) -> Framer:
        return LengthFramer(self._max_frame)

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._inode = _bind_unix(sock, self._path, self._mode)
        except BaseException:
            sock.close()
            raise
        return sock

    def _after_close(self) -> None:
        _unlink_if_ours(self._path, self._inode)


# -- URLs -----------------------------------------------------------------------------

ACCEPTED_FORMS = (
    "udp://host[:port], udp://[ipv6-address][:port], tcp://host[:port] "
    f"(the port defaults to {DEFAULT_PORT}; 0 lets the kernel pick); "
    "unixgram:///absolute/path (or unix://), unixstream:///absolute/path"
)


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    return port


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"a socket path must be a non-empty str without NUL, got {path!r}")
    return path


def _check_mode(mode: int) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits such as 0o600, got {mode!r}")
    return mode


def parse_url(url: str) -> tuple[str, Address]:
    """``(kind, address)`` for a listen URL; a ``ValueError`` naming the forms otherwise.
    The client's URL forms (one parser for both ends), plus port 0."""
    return transport.parse_url(url, what="listen URL", accepted=ACCEPTED_FORMS, port_zero=True)


def listen(url: str, sink: PacketSink, **options: Any) -> Listener:
    """A listener (not started) for ``url`` that hands every packet to ``sink``.

    ``options`` go to the listener's class: for every kind ``receive_buffer`` and
    ``max_datagram`` (datagrams) or ``model``, ``idle_timeout``, ``max_connections``,
    ``max_frame`` (streams); ``mode`` for Unix sockets; ``reuse_port`` for UDP. An
    option that does not apply to the URL's kind is a ``TypeError``.
    """
    kind, address = parse_url(url)
    if kind == "unixgram":
        assert isinstance(address, str)
        return UnixDatagramListener(sink, address, **options)
    if kind == "unixstream":
        assert isinstance(address, str)
        return UnixStreamListener(sink, address, **options)
    assert isinstance(address, tuple)
    host, port = address
    if kind == "udp":
        return UDPListener(sink, host, port, **options)
    return TCPListener(sink, host, port, **options)
