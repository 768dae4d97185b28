"""`AgentServer`: listeners -> ring -> parser and aggregator -> backends.

Listener threads do no parsing: they put each packet on a :class:`PacketRing` (many
producers, one consumer, drops counted when it is full) and go back to their sockets,
so a burst is absorbed by the ring rather than by the kernel's receive buffer. One
*ingest* thread takes the packets in batches, parses them with
:func:`conveyor.protocol.parse_packet` and folds them into the :class:`Aggregator`:
the aggregator has a single writer and needs no lock. Every ``flush_interval`` the
same thread turns the interval into a :class:`Snapshot` and hands it to every backend;
a backend that raises is counted and logged at a limited rate, never fatal.

Control requests (an explicit flush, the final flush at close) reach the ingest thread
through a small deque, and an empty packet on the ring wakes it: that keeps the one
writer rule without a lock on the packet path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.protocol import parse_packet

from ._aggregate import Aggregator, AggregatorStatistics
from ._backends import Backend
from ._listen import DEFAULT_URL, Listener, ListenerStatistics, listen
from ._listen_ring import PacketRing, PacketRingStatistics
from ._series import DEFAULT_PERCENTILES, Series, Snapshot

log = logging.getLogger("conveyor.agent")

DEFAULT_FLUSH_INTERVAL = 10.0


@dataclass(frozen=True)
class AgentStatistics:
    """A snapshot of the server: its listeners, its ring, its aggregator, its flushes."""

    listeners: tuple[ListenerStatistics, ...]
    ring: PacketRingStatistics
    aggregator: AggregatorStatistics
    flushes: int
    backend_errors: int


class _FlushRequest:
    __slots__ = ("done", "final", "snapshot")

    def __init__(self, final: bool) -> None:
        self.final = final
        self.done = threading.Event()
        self.snapshot: Snapshot | None = None


class AgentServer:
    """Receives DogStatsD on ``listen_urls``, aggregates, and emits to ``backends``.

    ``listener_options`` go to every stream listener (``model``, ``idle_timeout``,
    ``max_connections``...); see :func:`conveyor.agent.listen`.
    """

    def __init__(
        self,
        listen_urls: Sequence[str] = (DEFAULT_URL,),
        backends: Sequence[Backend] = (),
        *,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        max_contexts: int = 100_000,
        statsd_dialect: bool = False,
        ring_capacity: int = 4096,
        stream_options: dict[str, Any] | None = None,
        telemetry_tags: Sequence[str] = (),
    ) -> None:
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval!r}")
        if not listen_urls:
            raise ValueError("an agent needs at least one listen URL")
        self._flush_interval = float(flush_interval)
        self._statsd_dialect = statsd_dialect
        self._ring = PacketRing(ring_capacity)
        self._aggregator = Aggregator(
            percentiles=percentiles,
            max_contexts=max_contexts,
            statsd_dialect=statsd_dialect,
            telemetry_tags=telemetry_tags,
        )
        self._backends = tuple(backends)
        self._listeners: list[Listener] = []
        for url in listen_urls:
            options = dict(stream_options or {}) if _is_stream(url) else {}
            self._listeners.append(listen(url, self._ring, **options))
        self._requests: deque[_FlushRequest] = deque()
        self._thread: threading.Thread | None = None
        self._flushes = 0
        self._backend_errors = 0
        self._last_flush = time.monotonic()
        self._closed = False

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners, for their bound addresses (port 0 picks a free port)."""
        return tuple(self._listeners)

    def start(self) -> AgentServer:
        """Bind every listener and start the ingest thread; returns ``self``."""
        started: list[Listener] = []
        try:
            for listener in self._listeners:
                listener.start()
                started.append(listener)
        except BaseException:
            for listener in started:
                listener.close()
            raise
        self._last_flush = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="conveyor-agent-ingest")
        self._thread.start()
        return self

    def flush(self, timeout: float | None = 10.0) -> Snapshot | None:
        """Flush now (what has been read from the sockets so far) and return the snapshot
        given to the backends; None if the ingest thread did not answer in time."""
        return self._request(final=False, timeout=timeout)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop listening, ingest what is left, make a final flush, close the backends.
        Idempotent; leaves no thread behind."""
        if self._closed:
            return
        self._closed = True
        for listener in self._listeners:
            listener.close()
        if self._thread is not None:
            self._request(final=True, timeout=timeout)
            self._ring.close()
            self._thread.join(timeout)
        for backend in self._backends:
            try:
                backend.close()
            except Exception:
                log.exception("conveyor agent: closing backend %r failed", backend)

    def statistics(self) -> AgentStatistics:
        return AgentStatistics(
            listeners=tuple(listener.statistics() for listener in self._listeners),
            ring=self._ring.statistics(),
            aggregator=self._aggregator.statistics(),
            flushes=self._flushes,
            backend_errors=self._backend_errors,
        )

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ingest thread ---------------------------------------------------------------

    def _request(self, final: bool, timeout: float | None) -> Snapshot | None:
        request = _FlushRequest(final)
        self._requests.append(request)
        self._ring.put(b"")  # wake the ingest thread (an empty packet parses to nothing)
        if not request.done.wait(timeout):
            return None
        return request.snapshot

    def _run(self) -> None:
        ingest = self._aggregator.ingest
        dialect = self._statsd_dialect
        while True:
            due = self._last_flush + self._flush_interval
            batch = self._ring.take(timeout=max(0.0, due - time.monotonic()))
            for packet in batch:
                if packet:
                    ingest(parse_packet(packet, statsd_dialect=dialect))
            final = False
            while self._requests:
                request = self._requests.popleft()
                request.snapshot = self._flush()
                final = final or request.final
                request.done.set()
            if final:
                return
            if time.monotonic() >= due:
                self._flush()

    def _flush(self) -> Snapshot:
        now = time.monotonic()
        interval = max(now - self._last_flush, 1e-9)
        self._last_flush = now
        snapshot = self._aggregator.flush(interval, time.time(), telemetry=self._telemetry())
        self._flushes += 1
        for backend in self._backends:
            try:
                backend.emit(snapshot)
            except Exception:  # a backend never stops the agent
                self._backend_errors += 1
                log.exception("conveyor agent: backend %r failed to emit", backend)
        return snapshot

    def _telemetry(self) -> list[Series]:
        """The packet side's own figures, as totals since start."""
        now = time.time()
        series: list[Series] = []
        ring = self._ring.statistics()
        series.append(
            Series("conveyor.agent.ring.dropped", "gauge", (), ring.dropped_total, received=now)
        )
        series.append(Series("conveyor.agent.ring.depth", "gauge", (), ring.depth, received=now))
        for listener in self._listeners:
            stats = listener.statistics()
            tags = (f"listener:{stats.kind}",)
            series.append(
                Series(
                    "conveyor.agent.listener.packets", "gauge", tags, stats.packets, received=now
                )
            )
            series.append(
                Series(
                    "conveyor.agent.listener.framing_errors",
                    "gauge",
                    tags,
                    stats.framing_errors_total,
                    received=now,
                )
            )
            if stats.kernel_drops is not None:
                series.append(
                    Series(
                        "conveyor.agent.listener.kernel_drops",
                        "gauge",
                        tags,
                        stats.kernel_drops,
                        received=now,
                    )
                )
        return series


def _is_stream(url: str) -> bool:
    scheme = url.strip().partition("://")[0].lower()
    return scheme in ("tcp", "unixstream")
