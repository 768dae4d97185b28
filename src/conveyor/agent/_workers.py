"""`AgentWorkers`: ``--workers N``, N ingest processes sharing the UDP port.

One Python process parses and aggregates on one core (the GIL); past that, the kernel
drops datagrams. ``AgentWorkers`` starts N worker processes (multiprocessing's
``spawn`` context: no thread, lock or socket of the parent is inherited), each an
:class:`AgentServer` without backends whose UDP listeners are bound with
``SO_REUSEPORT`` to the same address: the kernel spreads the datagrams over them by a
hash of the sender's address and port, so each sender socket lands on one worker.

The parent binds nothing and owns the backends and the flush timer. At each flush it
asks every worker, over its :func:`multiprocessing.Pipe`, for a snapshot (the worker
calls its own :meth:`AgentServer.flush` and sends the pickled :class:`Snapshot`),
merges them with :meth:`Snapshot.merge` and emits the result. A worker that does not
answer in time is counted as a miss (its late answer is recognised by its sequence
number and discarded: its data is lost); a worker that has died is logged, counted
and left out of every later flush; neither hangs the parent.

Port 0 works: worker 0 is started first, binds the ports asked for, reports the
concrete URLs, and the other workers bind those. Only ``udp://`` listeners can be
shared this way: ``unixgram://`` paths and stream listeners (``tcp://``,
``unixstream://``) are refused when there is more than one worker (run a separate
agent for them).

The worker's own telemetry carries a ``worker:N`` tag, so that the ``conveyor.agent.*``
series of different workers stay apart in the merge.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from ._backends import Backend
from ._listen import DEFAULT_URL, listen, parse_url
from ._series import DEFAULT_PERCENTILES, Series, Snapshot
from ._server import DEFAULT_FLUSH_INTERVAL, AgentServer

log = logging.getLogger("conveyor.agent")

# A worker never flushes on its own: its data goes out only through the parent.
_WORKER_FLUSH_INTERVAL = 10.0 * 365 * 24 * 3600


@dataclass(frozen=True)
class WorkerStatistics:
    """One worker, as last reported: ``packets`` its listeners received since start,
    ``ring_dropped`` the packets its ring refused, ``kernel_drops`` the kernel's count
    for its socket (None if unknown); ``answered`` and ``missed`` its flush replies;
    ``alive`` False once it has died or stopped."""

    index: int
    pid: int | None
    alive: bool
    packets: int
    ring_dropped: int
    kernel_drops: int | None
    answered: int
    missed: int


@dataclass(frozen=True)
class AgentWorkersStatistics:
    workers: tuple[WorkerStatistics, ...]
    flushes: int
    backend_errors: int
    workers_lost: int


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, index: int, process: Any, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.alive = True
        self.packets = 0
        self.ring_dropped = 0
        self.kernel_drops: int | None = None
        self.answered = 0
        self.missed = 0

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            index=self.index,
            pid=self.process.pid,
            alive=self.alive,
            packets=self.packets,
            ring_dropped=self.ring_dropped,
            kernel_drops=self.kernel_drops,
            answered=self.answered,
            missed=self.missed,
        )


class AgentWorkers:
    """Like :class:`AgentServer` (``start``, ``flush``, ``close``, a context manager),
    with ``workers`` processes sharing the ``udp://`` listen URLs.

    ``server_options`` go to every worker's :class:`AgentServer` (``percentiles``,
    ``max_contexts``, ``statsd_dialect``, ``ring_capacity``...); they must pickle.
    """

    def __init__(
        self,
        listen_urls: Sequence[str] = (DEFAULT_URL,),
        backends: Sequence[Backend] = (),
        *,
        workers: int = 2,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        start_timeout: float = 60.0,
        **server_options: Any,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        if not listen_urls:
            raise ValueError("an agent needs at least one listen URL")
        for url in listen_urls:
            kind, _ = parse_url(url)  # raises ValueError on a bad URL
            if kind != "udp" and workers > 1:
                raise ValueError(
                    f"--workers {workers} shares only udp:// listeners (SO_REUSEPORT); "
                    f"{url!r} is {kind}: run it in a separate agent"
                )
        self._urls = tuple(listen_urls)
        self._backends = tuple(backends)
        self._count = workers
        self._flush_interval = float(flush_interval)
        self._start_timeout = start_timeout
        self._options: dict[str, Any] = {"percentiles": tuple(percentiles), **server_options}
        self._percentiles = tuple(percentiles)
        self._workers: list[_Worker] = []
        self._bound: tuple[str, ...] = ()
        self._lock = threading.Lock()  # one flush at a time (the pipes are request/reply)
        self._sequence = 0
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._last_flush = time.monotonic()
        self._flushes = 0
        self._backend_errors = 0
        self._lost = 0
        self._started = False
        self._closed = False

    @property
    def urls(self) -> tuple[str, ...]:
        """The listen URLs, with the concrete ports once started."""
        return self._bound or self._urls

    @property
    def workers(self) -> int:
        return self._count

    def start(self) -> AgentWorkers:
        """Start the workers (worker 0 first, to learn the ports), wait until every one
        is listening, and start the flush timer; returns ``self``."""
        if self._started:
            raise RuntimeError("AgentWorkers was already started")
        self._started = True
        context = multiprocessing.get_context("spawn")
        try:
            first = self._spawn(context, 0, self._urls)
            self._bound = self._await_ready(first)
            rest = [self._spawn(context, i, self._bound) for i in range(1, self._count)]
            for worker in rest:
                self._await_ready(worker)
        except BaseException:
            self._kill_all()
            raise
        self._last_flush = time.monotonic()
        self._timer = threading.Thread(target=self._tick, name="conveyor-agent-flush-timer")
        self._timer.start()
        return self

    def flush(self, timeout: float | None = 10.0) -> Snapshot | None:
        """Collect every worker's snapshot, merge, emit to the backends and return the
        merged snapshot (a worker that does not answer in ``timeout`` is left out)."""
        if not self._started or self._closed:
            return None
        return self._collect("flush", timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the workers (each reads what its socket holds, then makes a final
        flush), emit the merged final snapshot, close the backends. Idempotent."""
        if self._closed:
            return
        if self._started:
            self._stop.set()
            if self._timer is not None:
                self._timer.join()
            self._collect("stop", timeout)
            self._closed = True
            deadline = None if timeout is None else time.monotonic() + timeout
            for worker in self._workers:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                worker.process.join(remaining)
            self._kill_all()
        self._closed = True
        for backend in self._backends:
            try:
                backend.close()
            except Exception:
                log.exception("conveyor agent: closing backend %r failed", backend)

    def statistics(self) -> AgentWorkersStatistics:
        with self._lock:
            return AgentWorkersStatistics(
                workers=tuple(worker.statistics() for worker in self._workers),
                flushes=self._flushes,
                backend_errors=self._backend_errors,
                workers_lost=self._lost,
            )

    def __enter__(self) -> AgentWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the parent's side ---------------------------------------------------------------

    def _spawn(self, context: Any, index: int, urls: Sequence[str]) -> _Worker:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_worker_main,
            args=(child_end, index, tuple(urls), self._options),
            name=f"conveyor-agent-worker-{index}",
            daemon=True,
        )
        process.start()
        child_end.close()
        worker = _Worker(index, process, parent_end)
        self._workers.append(worker)
        return worker

    def _await_ready(self, worker: _Worker) -> tuple[str, ...]:
        try:
            if not worker.conn.poll(self._start_timeout):
                raise OSError(f"conveyor agent: worker {worker.index} did not start in time")
            message = worker.conn.recv()
        except (EOFError, OSError) as error:
            raise OSError(f"conveyor agent: worker {worker.index} failed to start") from error
        if message[0] == "error":
            raise OSError(f"worker {worker.index}: {message[1]}")
        urls: tuple[str, ...] = message[1]
        return urls

    def _kill_all(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
            worker.alive = False
            worker.conn.close()

    def _tick(self) -> None:
        while True:
            due = self._last_flush + self._flush_interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            if time.monotonic() < self._last_flush + self._flush_interval:
                continue  # an explicit flush() moved the next one
            try:
                self._collect("flush", 10.0)
            except Exception:  # the timer never dies
                log.exception("conveyor agent: flush failed")

    def _collect(self, command: str, timeout: float | None) -> Snapshot:
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
            asked: list[_Worker] = []
            for worker in self._workers:
                if not worker.alive:
                    continue
                try:
                    worker.conn.send((command, sequence))
                    asked.append(worker)
                except (OSError, ValueError):
                    self._lose(worker, "its pipe is closed")
            deadline = None if timeout is None else time.monotonic() + timeout
            parts: list[Snapshot] = []
            for worker in asked:
                snapshot = self._reply(worker, sequence, deadline)
                if snapshot is not None:
                    parts.append(snapshot)
            now = time.monotonic()
            interval = max(now - self._last_flush, 1e-9)
            self._last_flush = now
            if parts:
                merged = parts[0].merge(parts[1:])
            else:
                merged = Snapshot(time.time(), interval, percentiles=self._percentiles)
            merged = replace(merged, series=merged.series + tuple(self._telemetry()))
            self._flushes += 1
            for backend in self._backends:
                try:
                    backend.emit(merged)
                except Exception:  # a backend never stops the agent
                    self._backend_errors += 1
                    log.exception("conveyor agent: backend %r failed to emit", backend)
            return merged

    def _reply(self, worker: _Worker, sequence: int, deadline: float | None) -> Snapshot | None:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if not worker.conn.poll(remaining):
                    worker.missed += 1
                    log.warning("conveyor agent: worker %d did not answer in time", worker.index)
                    if not worker.process.is_alive():
                        self._lose(worker, f"it exited with {worker.process.exitcode}")
                    return None
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._lose(worker, "its pipe closed")
                return None
            answer, snapshot, packets, ring_dropped, kernel_drops = message
            if answer != sequence:
                continue  # the late answer to a flush that gave up on this worker
            worker.answered += 1
            worker.packets = packets
            worker.ring_dropped = ring_dropped
            worker.kernel_drops = kernel_drops
            assert isinstance(snapshot, Snapshot)
            return snapshot

    def _lose(self, worker: _Worker, why: str) -> None:
        if worker.alive and not self._stop.is_set():
            self._lost += 1
            log.error(
                "conveyor agent: worker %d (pid %s) lost: %s", worker.index, worker.process.pid, why
            )
        elif worker.alive:
            self._lost += 1
            log.warning("conveyor agent: worker %d lost while stopping: %s", worker.index, why)
        worker.alive = False
        worker.process.join(1.0)  # reap it (a worker whose pipe broke is exiting)

    def _telemetry(self) -> list[Series]:
        now = time.time()
        alive = sum(1 for worker in self._workers if worker.alive)
        return [
            Series("conveyor.agent.workers", "gauge", (), float(alive), received=now),
            Series("conveyor.agent.workers.lost", "gauge", (), float(self._lost), received=now),
        ]


# -- the worker's side ------------------------------------------------------------------


class _WorkerServer(AgentServer):
    """An :class:`AgentServer` whose UDP listeners share their port and whose listener
    telemetry carries the worker's tag."""

    def __init__(self, urls: Sequence[str], index: int, **options: Any) -> None:
        self._worker_tag = f"worker:{index}"
        super().__init__(
            urls,
            (),
            flush_interval=_WORKER_FLUSH_INTERVAL,
            telemetry_tags=(self._worker_tag,),
            **options,
        )
        self._listeners = [
            listen(url, self._ring, reuse_port=True) if parse_url(url)[0] == "udp" else listener
            for url, listener in zip(urls, self._listeners, strict=True)
        ]

    def _telemetry(self) -> list[Series]:
        return [
            replace(series, tags=tuple(sorted((*series.tags, self._worker_tag))))
            for series in super()._telemetry()
        ]


def _worker_main(
    conn: Connection, index: int, urls: tuple[str, ...], options: dict[str, Any]
) -> None:
    """A worker process: listen, then answer the parent's flushes until told to stop
    (or until the parent goes away: its end of the pipe closes)."""
    # The parent decides when to stop: Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        server = _WorkerServer(urls, index, **options)
        server.start()
    except Exception as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        conn.close()
        return
    conn.send(("ready", tuple(listener.url for listener in server.listeners)))
    try:
        while True:
            try:
                command, sequence = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone: nobody to hand a snapshot to
            if command == "stop":
                for listener in server.listeners:
                    listener.close()  # datagram listeners read what the kernel holds first
            snapshot = server.flush(timeout=None)
            stats = server.statistics()
            packets = sum(listener.packets for listener in stats.listeners)
            drops = [s.kernel_drops for s in stats.listeners if s.kernel_drops is not None]
            conn.send(
                (
                    sequence,
                    snapshot,
                    packets,
                    stats.ring.dropped_total,
                    sum(drops) if drops else None,
                )
            )
            if command == "stop":
                return
    finally:
        server.close()
        conn.close()
