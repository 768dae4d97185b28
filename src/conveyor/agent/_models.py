"""How a stream listener's threads share the work: the three connection threading models.

A stream listener (Unix stream or TCP) must read every connection, frame the bytes
into packets, and hand each packet to the sink, in the order the connection sent
them. The seed's question (``../shared/seeds/004``, after Rumba and Jarvis) is which
threads do that:

``"shared-loop"``
    One ``selectors`` loop owns the listening socket and every connection. It reads
    each readable connection and hands the bytes to that connection's own worker
    thread through a :mod:`conveyor.ring` SP/SC ring (one per connection); the worker
    frames and calls the sink. Order holds because one producer and one consumer
    share a FIFO ring. (Rumba's "single Conga wait": ``⎕TPUT`` to the connection's
    thread.)
``"connection-loops"``
    An accept thread; each connection gets a thread that runs its own wait loop on
    its socket (``poll`` with the idle deadline as timeout), reads, frames and calls
    the sink. Order holds trivially: one thread per connection. (Rumba's "multiple
    Conga wait".)
``"thread-per-event"``
    One loop reads every connection; each read spawns a short thread that frames and
    sinks. Order holds with a per-connection FIFO and turn lock: whichever event
    thread gets the connection's turn takes the *oldest* pending read, so reads are
    processed in arrival order whatever the threads' start order. (Jarvis: ``:Hold``
    per connection plus a FIFO token.)

Every model closes connections idle for ``idle_timeout`` seconds (checked on a timer,
not only when the loop is idle: Rumba's sweep runs only on a wait timeout, so a busy
server never sweeps), refuses connections past ``max_connections`` (accepted and
closed at once, counted), and bounds what one connection can buffer: when a
connection's hand-off is full the loop stops reading it until its thread catches up,
which pushes back on that client through the kernel's socket buffers instead of
growing memory or stalling the other connections.

Bookkeeping is per connection (one writer: the thread that feeds that connection) and
folded into the listener's totals under a lock when the connection ends, so the hot
path takes no lock.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from conveyor._ratelimit import RateLimitedLog
from conveyor.ring import AlertedError, BlockingWait, RingQueue, SCSequence, SPSequence

from ._listen_framing import Framer, FramingError

log = logging.getLogger("conveyor.agent")

PacketSink = Callable[[bytes], None]

#: The models by name, in the order the documentation describes them.
MODELS = ("shared-loop", "connection-loops", "thread-per-event")
#: The default, chosen from ``bench/agent/models.py`` (see docs/agent.md).
DEFAULT_MODEL = "shared-loop"
DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 1024
#: One ``recv()``: large enough for a few 8 KiB frames, small enough to bound the
#: memory a paused connection holds (``HANDOFF_SLOTS`` reads at most).
READ_SIZE = 64 * 1024
#: Reads in flight per connection (shared-loop ring slots, thread-per-event events).
HANDOFF_SLOTS = 8
#: Event threads alive at once (thread-per-event): past it, reading waits.
MAX_EVENT_THREADS = 64
#: How long a thread is given to finish when the listener closes.
JOIN_TIMEOUT = 10.0
#: The loop's poll period while a connection is paused on a full hand-off.
_PAUSED_POLL = 0.002


@dataclass(frozen=True)
class StreamConfig:
    """What every model needs to know; made by the stream listener."""

    sink: PacketSink
    new_framer: Callable[[], Framer]
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    name: str = "stream"


class Connection:
    """One accepted connection: its socket, framer and counters.

    ``feed`` is called by one thread at a time (the model guarantees it), so the
    counters have a single writer and need no lock.
    """

    __slots__ = (
        "_sock_lock",
        "bytes",
        "close_reason",
        "failed",
        "framer",
        "last_active",
        "name",
        "notes",
        "packets",
        "sink",
        "sink_errors",
        "sock",
        "sock_closed",
    )

    def __init__(self, sock: socket.socket, config: StreamConfig, notes: RateLimitedLog) -> None:
        self.sock = sock
        self.framer = config.new_framer()
        self.sink = config.sink
        self.name = config.name
        self.notes = notes
        self.packets = 0
        self.bytes = 0
        self.sink_errors = 0
        self.failed: str | None = None  # the framing error's reason
        self.close_reason: str | None = None  # "idle", "eof", "closed", "framing"
        self.last_active = time.monotonic()
        self._sock_lock = threading.Lock()
        self.sock_closed = False

    def feed(self, data: bytes) -> bool:
        """Frame ``data`` and sink the packets; False once the stream cannot be framed."""
        if self.failed is not None:
            return False
        self.bytes += len(data)
        try:
            packets = self.framer.feed(data)
        except FramingError as error:
            self._sink(error.packets)  # the frames before the bad one are good
            self.failed = error.reason
            self.notes.warning(error.reason, f"{self.name}: closing a connection: {error}")
            return False
        self._sink(packets)
        return True

    def finish(self) -> None:
        """After the last ``feed``: what the framer still holds is the stream's last
        packet, or a fragment that is counted as a framing error."""
        if self.failed is not None:
            return
        try:
            packets = self.framer.finish(eof=self.close_reason == "eof")
        except FramingError as error:
            self.failed = error.reason
            self.notes.warning(error.reason, f"{self.name}: {error}")
            return
        self._sink(packets)

    def _sink(self, packets: list[bytes]) -> None:
        sink = self.sink
        for packet in packets:
            try:
                sink(packet)
            except Exception as error:
                self.sink_errors += 1
                self.notes.warning("sink", f"the packet sink raised {error!r}; packet lost")
        self.packets += len(packets)

    def shutdown(self) -> None:
        """Stop the connection from another thread: the socket reads end of stream."""
        with self._sock_lock:
            if not self.sock_closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def close_socket(self) -> None:
        with self._sock_lock:
            if not self.sock_closed:
                self.sock_closed = True
                self.sock.close()


class StreamBooks:
    """The listener's connection counters; rare events only, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[Connection] = set()
        self.total = 0
        self.refused = 0
        self.idle_closed = 0
        self.framing_errors: Counter[str] = Counter()
        self.packets = 0
        self.bytes = 0
        self.sink_errors = 0

    def admit(self, max_connections: int) -> bool:
        with self.lock:
            if len(self.live) >= max_connections:
                self.refused += 1
                return False
            self.total += 1
            return True

    def opened(self, connection: Connection) -> None:
        with self.lock:
            self.live.add(connection)

    def retire(self, connection: Connection) -> None:
        """Fold a finished connection's counters in; called once, after its last feed."""
        with self.lock:
            if connection not in self.live:
                return
            connection.finish()
            self.live.discard(connection)
            self.packets += connection.packets
            self.bytes += connection.bytes
            self.sink_errors += connection.sink_errors
            if connection.failed is not None:
                self.framing_errors[connection.failed] += 1
            if connection.close_reason == "idle":
                self.idle_closed += 1

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            live = list(self.live)
            return {
                "packets": self.packets + sum(c.packets for c in live),
                "bytes": self.bytes + sum(c.bytes for c in live),
                "sink_errors": self.sink_errors + sum(c.sink_errors for c in live),
                "connections_open": len(live),
                "connections_total": self.total,
                "connections_refused": self.refused,
                "idle_closed": self.idle_closed,
                "framing_errors": dict(
                    self.framing_errors + Counter(c.failed for c in live if c.failed)
                ),
            }


def _accept(
    listening: socket.socket, books: StreamBooks, config: StreamConfig, notes: RateLimitedLog
) -> list[socket.socket]:
    """Every pending connection that is under the cap; the others are closed, counted."""
    accepted: list[socket.socket] = []
    while True:
        try:
            sock, _ = listening.accept()
        except (BlockingIOError, InterruptedError):
            return accepted
        except OSError as error:  # EMFILE and friends: try again on the next event
            notes.warning("accept", f"{config.name}: accept() failed: {error}")
            return accepted
        if books.admit(config.max_connections):
            accepted.append(sock)
        else:
            notes.warning(
                "refused",
                f"{config.name}: refused a connection: {config.max_connections} are open",
            )
            sock.close()


class Model:
    """Base class: owns the threads that serve one listening socket."""

    name: ClassVar[str]

    def __init__(self, listening: socket.socket, config: StreamConfig, books: StreamBooks):
        self._listening = listening
        self._config = config
        self._books = books
        self._log = RateLimitedLog(log)
        self._stop_r, self._stop_w = socket.socketpair()
        self._stop_r.setblocking(False)
        self._main: threading.Thread | None = None
        self._sweep = min(max(config.idle_timeout / 4, 0.001), 1.0)

    def start(self) -> None:
        self._listening.setblocking(False)
        self._main = threading.Thread(
            target=self._run, name=f"conveyor-agent-{self._config.name}-{self.name}", daemon=True
        )
        self._main.start()

    def close(self) -> None:
        """Stop every thread of the model and join them; connections are closed."""
        with contextlib.suppress(OSError):
            self._stop_w.send(b"x")
        if self._main is not None and self._main is not threading.current_thread():
            self._main.join(JOIN_TIMEOUT)
            if self._main.is_alive():
                log.warning("%s: %s loop did not stop in time", self._config.name, self.name)
        self._stop_r.close()
        self._stop_w.close()

    def _run(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _join(threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


_READ_OK = object()
_READ_PAUSE = object()
_READ_END = object()


class _LoopModel(Model):
    """One ``selectors`` loop reads every connection (shared-loop, thread-per-event);
    subclasses say how the bytes reach the thread that frames them."""

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listening, selectors.EVENT_READ, None)
        selector.register(self._stop_r, selectors.EVENT_READ, self)
        connections: dict[Connection, None] = {}
        paused: list[Connection] = []
        next_sweep = time.monotonic() + self._sweep
        try:
            while True:
                timeout = max(0.0, next_sweep - time.monotonic())
                if paused:
                    timeout = min(timeout, _PAUSED_POLL)
                for key, _ in selector.select(timeout):
                    data = key.data
                    if data is None:
                        for sock in _accept(self._listening, self._books, self._config, self._log):
                            sock.setblocking(False)
                            connection = self._open(sock)
                            self._books.opened(connection)
                            connections[connection] = None
                            selector.register(sock, selectors.EVENT_READ, connection)
                    elif data is self:
                        return
                    else:
                        status = self._read(data)
                        if status is not _READ_OK:
                            selector.unregister(data.sock)
                            if status is _READ_PAUSE:
                                paused.append(data)  # hand-off full: retried below
                            else:
                                del connections[data]
                                self._finish(data, "framing" if data.failed else "eof")
                if paused:
                    still = []
                    for connection in paused:
                        if self._has_room(connection):
                            selector.register(connection.sock, selectors.EVENT_READ, connection)
                        else:
                            still.append(connection)
                    paused = still
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + self._sweep
                    deadline = now - self._config.idle_timeout
                    for connection in [c for c in connections if c.last_active < deadline]:
                        if connection in paused:
                            paused.remove(connection)
                        else:
                            selector.unregister(connection.sock)
                        del connections[connection]
                        self._finish(connection, "idle")
        except Exception:  # a bug here must not leave the listener silently dead
            log.exception("%s: %s loop failed", self._config.name, self.name)
        finally:
            for connection in list(connections):
                self._finish(connection, "closed")
            selector.close()
            self._drain()

    def _read(self, connection: Connection) -> object:
        """Read once and hand the bytes on: ``_READ_OK``, ``_READ_PAUSE`` (the hand-off
        is full: stop reading for now) or ``_READ_END`` (end of stream)."""
        if not self._has_room(connection):
            return _READ_PAUSE
        try:
            data = connection.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return _READ_OK
        except OSError:
            data = b""
        if not data:
            return _READ_END
        connection.last_active = time.monotonic()
        self._hand(connection, data)
        return _READ_OK

    def _open(self, sock: socket.socket) -> Connection:
        raise NotImplementedError

    def _has_room(self, connection: Connection) -> bool:
        raise NotImplementedError

    def _hand(self, connection: Connection, data: bytes) -> None:
        raise NotImplementedError

    def _finish(self, connection: Connection, reason: str) -> None:
        """The loop is done with ``connection``: close its socket; its thread(s) finish
        what was handed over and retire it."""
        raise NotImplementedError

    def _drain(self) -> None:
        """After the loop: join every thread the model started."""
        raise NotImplementedError


class _Chunk:
    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: bytes = b""


class _RingConnection(Connection):
    __slots__ = ("pub", "ring", "sub", "thread", "wait")

    def __init__(self, sock: socket.socket, config: StreamConfig, notes: RateLimitedLog) -> None:
        super().__init__(sock, config, notes)
        self.ring: RingQueue[_Chunk] = RingQueue(_Chunk, HANDOFF_SLOTS)
        self.wait = BlockingWait()
        self.pub = SPSequence(HANDOFF_SLOTS)
        self.sub = SCSequence(wait=self.wait)
        self.pub.then(self.sub).then(self.pub)
        self.thread: threading.Thread | None = None


class SharedLoop(_LoopModel):
    """``"shared-loop"``: one loop reads; each connection's thread frames and sinks.

    The loop is the only producer of a connection's SP/SC ring and the connection's
    thread its only consumer, so the bytes are framed in the order they were read.
    End of stream is an ``alert()`` of the consumer's wait strategy, sent after the
    last publish: the thread drains what is published and exits.
    """

    name = "shared-loop"

    def __init__(self, listening: socket.socket, config: StreamConfig, books: StreamBooks):
        super().__init__(listening, config, books)
        self._threads: list[threading.Thread] = []

    def _open(self, sock: socket.socket) -> Connection:
        connection = _RingConnection(sock, self._config, self._log)
        thread = threading.Thread(
            target=self._work,
            args=(connection,),
            name=f"conveyor-agent-{self._config.name}-connection",
            daemon=True,
        )
        connection.thread = thread
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return connection

    def _has_room(self, connection: Connection) -> bool:
        assert isinstance(connection, _RingConnection)
        return connection.pub.next() >= 0

    def _hand(self, connection: Connection, data: bytes) -> None:
        assert isinstance(connection, _RingConnection)
        cursor = connection.pub.next()  # _has_room() said there is a slot
        connection.ring.get(cursor).data = data
        connection.pub.done(cursor)

    def _finish(self, connection: Connection, reason: str) -> None:
        assert isinstance(connection, _RingConnection)
        connection.close_reason = reason
        connection.close_socket()
        connection.wait.alert()

    def _work(self, connection: _RingConnection) -> None:
        sub = connection.sub
        ring = connection.ring
        try:
            while True:
                try:
                    cursor = sub.next_blocking()
                except AlertedError:
                    cursor = sub.next()  # the loop published everything before alerting
                    if cursor < 0:
                        return
                hi = sub.available()
                for index in range(cursor, hi):
                    slot = ring.get(index)
                    data = slot.data
                    slot.data = b""
                    if not connection.feed(data):
                        connection.shutdown()  # the loop sees end of stream and finishes
                sub.done(hi - 1)
        finally:
            self._books.retire(connection)

    def _drain(self) -> None:
        self._join(self._threads)


class _EventConnection(Connection):
    __slots__ = ("finished", "mutex", "outstanding", "pending", "turn")

    def __init__(self, sock: socket.socket, config: StreamConfig, notes: RateLimitedLog) -> None:
        super().__init__(sock, config, notes)
        self.pending: deque[bytes] = deque()
        self.mutex = threading.Lock()  # guards pending, outstanding, finished
        self.turn = threading.Lock()  # held while one event thread frames and sinks
        self.outstanding = 0
        self.finished = False


class ThreadPerEvent(_LoopModel):
    """``"thread-per-event"``: one loop reads; every read gets a new short thread.

    The loop appends each read to the connection's FIFO and starts a thread; a thread
    takes the connection's turn lock, pops the *oldest* read and processes it. Which
    thread runs first does not matter: the reads leave the FIFO in arrival order. At
    most ``HANDOFF_SLOTS`` reads wait per connection and ``MAX_EVENT_THREADS`` threads
    live at once; past either, the loop stops reading that connection for a moment.
    """

    name = "thread-per-event"

    def __init__(self, listening: socket.socket, config: StreamConfig, books: StreamBooks):
        super().__init__(listening, config, books)
        self._threads: list[threading.Thread] = []
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    def _open(self, sock: socket.socket) -> Connection:
        return _EventConnection(sock, self._config, self._log)

    def _has_room(self, connection: Connection) -> bool:
        assert isinstance(connection, _EventConnection)
        return connection.outstanding < HANDOFF_SLOTS and self._inflight < MAX_EVENT_THREADS

    def _hand(self, connection: Connection, data: bytes) -> None:
        assert isinstance(connection, _EventConnection)
        with connection.mutex:
            connection.pending.append(data)
            connection.outstanding += 1
        with self._inflight_lock:
            self._inflight += 1
        thread = threading.Thread(
            target=self._event,
            args=(connection,),
            name=f"conveyor-agent-{self._config.name}-event",
            daemon=True,
        )
        if len(self._threads) >= MAX_EVENT_THREADS:
            self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _event(self, connection: _EventConnection) -> None:
        retire = False
        try:
            with connection.turn:
                with connection.mutex:
                    data = connection.pending.popleft()
                if not connection.feed(data):
                    connection.shutdown()
        finally:
            with connection.mutex:
                connection.outstanding -= 1
                retire = connection.finished and connection.outstanding == 0
            with self._inflight_lock:
                self._inflight -= 1
            if retire:
                self._books.retire(connection)

    def _finish(self, connection: Connection, reason: str) -> None:
        assert isinstance(connection, _EventConnection)
        connection.close_reason = reason
        connection.close_socket()
        with connection.mutex:
            connection.finished = True
            retire = connection.outstanding == 0
        if retire:
            self._books.retire(connection)

    def _drain(self) -> None:
        self._join(self._threads)


class ConnectionLoops(Model):
    """``"connection-loops"``: an accept thread, and a thread per connection that
    waits on its own socket (``poll`` with the idle deadline as the timeout).

    The listener's stop socket is in every connection's poll set: one byte written
    at close wakes them all (nobody reads it, so it stays readable).
    """

    name = "connection-loops"

    def __init__(self, listening: socket.socket, config: StreamConfig, books: StreamBooks):
        super().__init__(listening, config, books)
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._listening, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop = self._stop_r.fileno()
        try:
            while True:
                events = poller.poll()
                if any(fd == stop for fd, _ in events):
                    return
                for sock in _accept(self._listening, self._books, self._config, self._log):
                    sock.setblocking(False)
                    connection = Connection(sock, self._config, self._log)
                    self._books.opened(connection)
                    thread = threading.Thread(
                        target=self._serve,
                        args=(connection,),
                        name=f"conveyor-agent-{self._config.name}-connection",
                        daemon=True,
                    )
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                    thread.start()
        except Exception:
            log.exception("%s: %s accept loop failed", self._config.name, self.name)
        finally:
            self._join(self._threads)

    def _serve(self, connection: Connection) -> None:
        sock = connection.sock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        stop = self._stop_r.fileno()
        idle = self._config.idle_timeout
        try:
            while True:
                remaining = connection.last_active + idle - time.monotonic()
                if remaining <= 0:
                    connection.close_reason = "idle"
                    return
                events = poller.poll(max(1, int(remaining * 1000) + 1))
                if not events:
                    continue
                if any(fd == stop for fd, _ in events):
                    connection.close_reason = "closed"
                    return
                try:
                    data = sock.recv(READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    connection.close_reason = "eof"
                    return
                connection.last_active = time.monotonic()
                if not connection.feed(data):
                    connection.close_reason = "framing"
                    return
        except Exception:
            log.exception("%s: connection thread failed", self._config.name)
        finally:
            connection.close_socket()
            self._books.retire(connection)


_BY_NAME: dict[str, type[Model]] = {
    "shared-loop": SharedLoop,
    "connection-loops": ConnectionLoops,
    "thread-per-event": ThreadPerEvent,
}


def model_class(name: str) -> type[Model]:
    """The model called ``name``; a ``ValueError`` listing the names otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown connection threading model {name!r}; choose one of {', '.join(MODELS)}"
        ) from None
