"""Shared pieces of the client benchmarks: the UDP receiver process, the clients under
test (conveyor and its peers) behind one small adapter, and the run header.

The receiver runs in its own process (``multiprocessing``, spawn start method), so it
never competes for the benchmark's GIL. It binds ``127.0.0.1`` (loopback only) with an
8 MiB receive buffer, stores datagrams as they arrive (a list append per datagram,
folded into a ``Counter`` of identical payloads every 64 Ki datagrams) and parses them
with :func:`conveyor.protocol.parse_packet` only when asked for a count, so that
parsing never slows down the reception. A count sums the counter values of one metric
name, each divided by its sample rate: aggregating clients send sums, not one line per
call. Kernel drops for the socket come from the ``drops`` column of ``/proc/net/udp``.

Peers (all configured as the issue asks, everything else at its defaults):

* ``conveyor``: ``conveyor.client.Client`` (aggregation on, companion sender thread).
* ``dd-agg``: ``datadog.DogStatsd(disable_background_sender=False,
  disable_aggregation=False)``: background sender and client-side aggregation.
* ``dd-noagg``: ``datadog.DogStatsd(disable_background_sender=False)``: background
  sender, no aggregation (buffering stays at its default, off: one packet per call).
* ``statsd``: ``statsd.StatsClient``: synchronous ``sendto`` per call; plain StatsD has
  no tags, so its calls carry none.
* ``otel``: opentelemetry-sdk ``Counter.add`` / ``Histogram.record`` / ``Gauge.set`` on a
  ``MeterProvider`` with an ``InMemoryMetricReader`` (aggregation in the caller's thread,
  no socket path: hot path and interference only).
* ``prometheus``: prometheus_client ``Counter.labels(...).inc()`` and friends on a private
  registry (no socket path: hot path and interference only).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import select
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from multiprocessing.connection import Connection
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _stats import environment

#: Two tags, one prebuilt list shared by every variant (so no variant pays for
#: building it): the call measured is ``increment(name, tags=TAGS)``.
TAGS = ["env:bench", "route:home"]
#: The same two tags as label values / attributes for the non-DogStatsD peers.
LABELS = ("bench", "home")
ATTRS = {"env": "bench", "route": "home"}

RCVBUF = 8 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

#: The code a client benchmark measures (whose git state its published results name).
CLIENT_CODE = (
    "src/conveyor/client",
    "src/conveyor/protocol",
    "src/conveyor/transport",
    "src/conveyor/lifecycle",
    "src/conveyor/_ratelimit.py",
)

SOCKET_PEERS = ("conveyor", "dd-agg", "dd-noagg", "statsd")
ALL_PEERS = (*SOCKET_PEERS, "otel", "prometheus")

PEER_LABELS = {
    "conveyor": "conveyor Client",
    "conveyor-py": "conveyor Client, Python only (no C fast paths)",
    "dd-agg": "DogStatsd (bg sender, aggregation on)",
    "dd-noagg": "DogStatsd (bg sender, aggregation off)",
    "statsd": "statsd.StatsClient (sync, no tags)",
    "otel": "opentelemetry-sdk (no socket)",
    "prometheus": "prometheus_client (no socket)",
}


# -- the receiver process ---------------------------------------------------------------


def udp_drops(port: int) -> int:
    """The kernel's drop counter of the IPv4 UDP socket bound to 127.0.0.1:``port``
    (``/proc/net/udp``, last column), or -1 if it cannot be read."""
    local = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/udp", encoding="ascii") as f:
            for text in f:
                fields = text.split()
                if len(fields) > 2 and fields[1] == local:
                    return int(fields[-1])
    except (OSError, ValueError):
        pass
    return -1


def _tally(raw: Counter[bytes], totals: dict[str, float]) -> int:
    """Parse each distinct payload once and add its counters, times its multiplicity,
    to ``totals``; return the number of bad lines."""
    from conveyor.protocol import parse_packet

    bad = 0
    for payload, times in raw.items():
        result = parse_packet(payload)
        bad += result.bad_lines * times
        for metric in result.metrics:
            if metric.type == "c":
                totals[metric.name] = totals.get(metric.name, 0.0) + (
                    sum(metric.values) / metric.sample_rate * times
                )
    raw.clear()
    return bad


def _receiver_main(conn: Connection, rcvbuf: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)  # root: past rmem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    conn.send((port, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
    packets: list[bytes] = []
    raw: Counter[bytes] = Counter()
    totals: dict[str, float] = {}
    received = 0
    bad = 0
    recv = sock.recv
    append = packets.append

    def drain() -> int:
        nonlocal received
        got = 0
        try:
            while True:
                append(recv(65536))
                got += 1
                if len(packets) >= 65536:
                    raw.update(packets)
                    received += len(packets)
                    packets.clear()
        except BlockingIOError:
            pass
        return got

    def settle(quiet: float) -> None:
        """Drain until nothing has arrived for ``quiet`` seconds."""
        while True:
            drain()
            ready, _, _ = select.select([sock], [], [], quiet)
            if not ready:
                return

    def fold() -> None:
        nonlocal received
        raw.update(packets)
        received += len(packets)
        packets.clear()

    while True:
        drain()
        if conn.poll():
            command, arg = conn.recv()
            if command == "count":
                settle(0.05)
                fold()
                bad += _tally(raw, totals)
                conn.send((totals.pop(arg, 0.0), received, udp_drops(port), bad))
            elif command == "discard":
                settle(0.02)
                packets.clear()
                raw.clear()
                conn.send((0.0, received, udp_drops(port), bad))
            elif command == "stop":
                conn.send(None)
                sock.close()
                return
            continue
        select.select([sock.fileno(), conn.fileno()], [], [], 0.5)


@dataclass(frozen=True)
class Tally:
    value: float  # sum of the counter values of the asked name (/ sample rate)
    packets: int  # datagrams received so far, all names
    kernel_drops: int  # the socket's drop counter (cumulative), -1 if unknown
    bad_lines: int  # lines parse_packet could not read (cumulative)


class Receiver:
    """A DogStatsD sink in a separate process on 127.0.0.1 (see the module docstring)."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_receiver_main, args=(child, rcvbuf), name="bench-receiver", daemon=True
        )
        self._proc.start()
        child.close()
        port, effective = self._conn.recv()
        self.port: int = port
        self.rcvbuf: int = effective

    def count(self, name: str) -> Tally:
        """Wait until the socket is quiet, then the total of counter ``name`` (which is
        then forgotten) and the receiver's books."""
        self._conn.send(("count", name))
        value, packets, drops, bad = self._conn.recv()
        return Tally(value, packets, drops, bad)

    def discard(self) -> Tally:
        """Wait until the socket is quiet and forget everything received."""
        self._conn.send(("discard", ""))
        value, packets, drops, bad = self._conn.recv()
        return Tally(value, packets, drops, bad)

    def close(self) -> None:
        try:
            self._conn.send(("stop", ""))
            self._conn.recv()
        except (OSError, EOFError):
            pass
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- scheduler accounting ---------------------------------------------------------------


def thread_sched() -> tuple[int, int]:
    """(CPU ns, ns spent runnable but waiting for a CPU) of the calling thread, from
    ``/proc/thread-self/schedstat``; (0, 0) where that file does not exist."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            cpu, wait, _ = f.read().split()
        return int(cpu), int(wait)
    except (OSError, ValueError):
        return 0, 0


def tasks_sched() -> dict[int, tuple[int, int]]:
    """``thread_sched()`` for every thread of this process, by thread id."""
    out: dict[int, tuple[int, int]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", encoding="ascii") as f:
                cpu, wait, _ = f.read().split()
            out[int(tid)] = (int(cpu), int(wait))
        except (OSError, ValueError):
            continue
    return out


def sched_delta(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[float, float]:
    """(CPU seconds, run-queue wait seconds) summed over the threads in both snapshots."""
    cpu = wait = 0
    for tid, (c1, w1) in after.items():
        if tid in before:
            c0, w0 = before[tid]
            cpu += c1 - c0
            wait += w1 - w0
    return cpu / 1e9, wait / 1e9


# -- the clients under test -------------------------------------------------------------

Loop = Callable[[int], None]


class Peer:
    """One client under test. ``loop(op, name)`` returns a function that makes ``n``
    calls of one kind, the client's own method called directly in the loop (no adapter
    in between); ``drain()`` waits until what was recorded has left the process;
    ``close()`` delivers everything and stops the client's threads."""

    key = ""
    has_socket = True

    def loop(self, op: str, name: str) -> Loop | None:
        raise NotImplementedError

    def recorder(self) -> Callable[[float], None]:
        """Five metrics for one request of the interference benchmark."""
        raise NotImplementedError

    def drain(self) -> None:
        """Between samples: let background work finish (not timed)."""

    def close(self) -> bool:
        """Deliver everything and stop; True if the client says all went out."""
        return True

    def dropped(self) -> str:
        """What the client itself counted as dropped (empty if it does not say)."""
        return ""


class ConveyorPeer(Peer):
    key = "conveyor"

    def __init__(self, port: int, *, python_only: bool = False) -> None:
        from conveyor.client import Client

        self.client = Client(host="127.0.0.1", port=port)
        if python_only:
            # What an install without a C compiler runs: the class's Python methods
            # (the C fast paths are instance attributes in front of them).
            self.key = "conveyor-py"
            # (delattr, not `vars()`: materialising the instance dict would slow every
            # attribute read of the client and bias the figures against it.)
            for name in ("increment", "count", "gauge", "histogram", "distribution", "timing"):
                with contextlib.suppress(AttributeError):
                    delattr(self.client, name)

    def loop(self, op: str, name: str) -> Loop | None:
        c = self.client
        if op == "increment":
            f = c.increment

            def run(n: int) -> None:
                for _ in range(n):
                    f(name, tags=TAGS)

        elif op == "gauge":
            g = c.gauge

            def run(n: int) -> None:
                for _ in range(n):
                    g(name, 42.5, tags=TAGS)

        elif op == "histogram":
            h = c.histogram

            def run(n: int) -> None:
                for _ in range(n):
                    h(name, 0.25, tags=TAGS)

        elif op == "bound":
            b = c.counter(name, TAGS).increment

            def run(n: int) -> None:
                for _ in range(n):
                    b()

        else:
            return None
        return run

    def recorder(self) -> Callable[[float], None]:
        c = self.client
        inc, hist, gauge, timing = c.increment, c.histogram, c.gauge, c.timing

        def record(latency: float) -> None:
            inc("bench.req.count", tags=TAGS)
            hist("bench.req.latency", latency, tags=TAGS)
            gauge("bench.req.inflight", 3, tags=TAGS)
            inc("bench.req.status", tags=["status:200", "route:home"])
            timing("bench.req.db", latency * 250.0, tags=TAGS)

        return record

    def drain(self) -> None:
        self.client.flush(timeout=60)

    def close(self) -> bool:
        return self.client.close(timeout=120)

    def dropped(self) -> str:
        stats = self.client.statistics()
        drops = {k: v for k, v in stats.dropped.items() if v}
        return ", ".join(f"{k}={v}" for k, v in drops.items()) if drops else "0"


class DogStatsdPeer(Peer):
    def __init__(self, port: int, aggregate: bool) -> None:
        from datadog.dogstatsd.base import DogStatsd

        self.key = "dd-agg" if aggregate else "dd-noagg"
        self.aggregate = aggregate
        self.client = DogStatsd(
            host="127.0.0.1",
            port=port,
            disable_background_sender=False,
            disable_aggregation=not aggregate,
        )

    def loop(self, op: str, name: str) -> Loop | None:
        c = self.client
        if op == "increment":
            f = c.increment

            def run(n: int) -> None:
                for _ in range(n):
                    f(name, tags=TAGS)

        elif op == "gauge":
            g = c.gauge

            def run(n: int) -> None:
                for _ in range(n):
                    g(name, 42.5, tags=TAGS)

        elif op == "histogram":
            h = c.histogram

            def run(n: int) -> None:
                for _ in range(n):
                    h(name, 0.25, tags=TAGS)

        else:
            return None  # no bound counter
        return run

    def recorder(self) -> Callable[[float], None]:
        c = self.client
        inc, hist, gauge, timing = c.increment, c.histogram, c.gauge, c.timing

        def record(latency: float) -> None:
            inc("bench.req.count", tags=TAGS)
            hist("bench.req.latency", latency, tags=TAGS)
            gauge("bench.req.inflight", 3, tags=TAGS)
            inc("bench.req.status", tags=["status:200", "route:home"])
            timing("bench.req.db", latency * 250.0, tags=TAGS)

        return record

    def drain(self) -> None:
        # flush() and wait_for_pending() do not flush the aggregator (research notes
        # 1.8); flush it first, then wait for the sender queue.
        if self.aggregate:
            self.client.flush_aggregated_metrics()
        self.client.wait_for_pending(timeout=120)

    def close(self) -> bool:
        # Only stop() drains everything: aggregator, buffer and the sender queue.
        return bool(self.client.stop(timeout=300))

    def dropped(self) -> str:
        c: Any = self.client
        fields = (
            "packets_dropped_queue",
            "packets_dropped_writer",
            "packets_dropped_expired",
        )
        parts = [f"{f[16:]}={getattr(c, f, 0)}" for f in fields if getattr(c, f, 0)]
        return ", ".join(parts) if parts else "0"


class StatsdPeer(Peer):
    key = "statsd"

    def __init__(self, port: int) -> None:
        import statsd  # type: ignore[import-untyped]

        self.client: Any = statsd.StatsClient("127.0.0.1", port)

    def loop(self, op: str, name: str) -> Loop | None:
        c = self.client
        if op == "increment":
            f = c.incr

            def run(n: int) -> None:
                for _ in range(n):
                    f(name)

        elif op == "gauge":
            g = c.gauge

            def run(n: int) -> None:
                for _ in range(n):
                    g(name, 42.5)

        elif op == "histogram":  # plain StatsD has no histogram: its timer is the analogue
            h = c.timing

            def run(n: int) -> None:
                for _ in range(n):
                    h(name, 0.25)

        else:
            return None
        return run

    def recorder(self) -> Callable[[float], None]:
        c = self.client
        incr, timing, gauge = c.incr, c.timing, c.gauge

        def record(latency: float) -> None:
            incr("bench.req.count")
            timing("bench.req.latency", latency * 1000.0)
            gauge("bench.req.inflight", 3)
            incr("bench.req.status.200")
            timing("bench.req.db", latency * 250.0)

        return record

    def close(self) -> bool:
        self.client.close()
        return True


class OtelPeer(Peer):
    key = "otel"
    has_socket = False

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.meter = self.provider.get_meter("conveyor.bench")

    def loop(self, op: str, name: str) -> Loop | None:
        m = self.meter
        attrs = ATTRS
        if op == "increment":
            add = m.create_counter(name).add

            def run(n: int) -> None:
                for _ in range(n):
                    add(1, attrs)

        elif op == "gauge":
            set_ = m.create_gauge(name).set

            def run(n: int) -> None:
                for _ in range(n):
                    set_(42.5, attrs)

        elif op == "histogram":
            record = m.create_histogram(name).record

            def run(n: int) -> None:
                for _ in range(n):
                    record(0.25, attrs)

        else:
            return None  # no bound instruments in the OTel API
        return run

    def recorder(self) -> Callable[[float], None]:
        m = self.meter
        count = m.create_counter("bench.req.count").add
        latency_h = m.create_histogram("bench.req.latency").record
        inflight = m.create_gauge("bench.req.inflight").set
        status = m.create_counter("bench.req.status").add
        db = m.create_histogram("bench.req.db").record
        attrs = ATTRS

        def record(latency: float) -> None:
            count(1, attrs)
            latency_h(latency, attrs)
            inflight(3, attrs)
            status(1, {"status": "200", "route": "home"})
            db(latency * 250.0, attrs)

        return record

    def close(self) -> bool:
        self.provider.shutdown()
        return True


class PrometheusPeer(Peer):
    key = "prometheus"
    has_socket = False

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()

    def loop(self, op: str, name: str) -> Loop | None:
        from prometheus_client import Counter as PCounter
        from prometheus_client import Gauge, Histogram

        pname = name.replace(".", "_")
        labels = ("env", "route")
        a, b = LABELS
        if op == "increment":
            counter = PCounter(pname, "bench", labels, registry=self.registry)

            def run(n: int) -> None:
                for _ in range(n):
                    counter.labels(a, b).inc()

        elif op == "gauge":
            gauge = Gauge(pname, "bench", labels, registry=self.registry)

            def run(n: int) -> None:
                for _ in range(n):
                    gauge.labels(a, b).set(42.5)

        elif op == "histogram":
            hist = Histogram(pname, "bench", labels, registry=self.registry)

            def run(n: int) -> None:
                for _ in range(n):
                    hist.labels(a, b).observe(0.25)

        elif op == "bound":
            inc = PCounter(pname, "bench", labels, registry=self.registry).labels(a, b).inc

            def run(n: int) -> None:
                for _ in range(n):
                    inc()

        else:
            return None
        return run

    def recorder(self) -> Callable[[float], None]:
        from prometheus_client import Counter as PCounter
        from prometheus_client import Gauge, Histogram

        reg = self.registry
        labels = ("env", "route")
        count = PCounter("bench_req_count", "bench", labels, registry=reg)
        latency_h = Histogram("bench_req_latency", "bench", labels, registry=reg)
        inflight = Gauge("bench_req_inflight", "bench", labels, registry=reg)
        status = PCounter("bench_req_status", "bench", ("status", "route"), registry=reg)
        db = Histogram("bench_req_db", "bench", labels, registry=reg)
        a, b = LABELS

        def record(latency: float) -> None:
            count.labels(a, b).inc()
            latency_h.labels(a, b).observe(latency)
            inflight.labels(a, b).set(3)
            status.labels("200", b).inc()
            db.labels(a, b).observe(latency * 250.0)

        return record


def make_peer(key: str, port: int) -> Peer:
    makers: dict[str, Callable[[], Peer]] = {
        "conveyor": lambda: ConveyorPeer(port),
        "conveyor-py": lambda: ConveyorPeer(port, python_only=True),
        "dd-agg": lambda: DogStatsdPeer(port, aggregate=True),
        "dd-noagg": lambda: DogStatsdPeer(port, aggregate=False),
        "statsd": lambda: StatsdPeer(port),
        "otel": OtelPeer,
        "prometheus": PrometheusPeer,
    }
    if key not in makers:
        raise ValueError(f"unknown peer {key!r}")
    return makers[key]()


# -- the bare reference -----------------------------------------------------------------

#: Bounded like the client's queue (65,536), so that the floor runs in a steady state
#: (old tuples freed as new ones come, as a drained queue does) instead of growing the
#: heap for the whole sample, which would make the floor dearer and flatter the ratios.
BARE_QUEUE: deque[tuple[str, float]] = deque(maxlen=65_536)


def bare_increment(
    metric: str, value: float = 1, tags: list[str] | None = None, sample_rate: float | None = None
) -> None:
    """The floor: a plain function with ``increment``'s signature that appends a tuple
    to a ``collections.deque`` and does nothing else.

    The tuple is ``(metric, value)``: atoms only, so the cycle collector untracks it (as
    it does conveyor's ``(name, tags_tuple)`` keys). A tuple holding the caller's tags
    *list* would stay tracked and make every collection walk the whole backlog, which
    roughly doubles this floor's cost and would flatter every ratio against it."""
    BARE_QUEUE.append((metric, value))


def bare_loop(name: str) -> Loop:
    f = bare_increment

    def run(n: int) -> None:
        for _ in range(n):
            f(name, tags=TAGS)

    return run


def empty_loop(n: int) -> None:
    """The ``for`` loop alone, to show what every per-call figure includes."""
    for _ in range(n):
        pass


def freeze_heap() -> None:
    """Collect, then move every object alive now to the collector's permanent generation.

    The benchmark process imports five client libraries; without this, every full
    collection triggered by any client's allocations walks all of their objects, which
    puts the size of the benchmark's own heap into the per-call figures at random. The
    collector still runs: what the measured calls allocate is still collected."""
    gc.collect()
    gc.freeze()


# -- the run header ---------------------------------------------------------------------


def versions() -> str:
    parts = []
    for dist in ("conveyor", "datadog", "statsd", "opentelemetry-sdk", "prometheus-client"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return "# versions: " + ", ".join(parts)


def source_state() -> str:
    """The git commit of the conveyor source under test, and whether src/ has local
    changes (the client may be edited while benchmarks run)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "# conveyor source: unknown (no git)"
    return f"# conveyor source: git {head}" + (" + uncommitted changes in src/" if dirty else "")


def header(title: str, argv: list[str]) -> str:
    return "\n".join(
        [
            f"## {title}",
            "",
            "```",
            f"# command: {' '.join(['python', *argv])}",
            f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            environment(),
            versions(),
            source_state(),
            "```",
            "",
        ]
    )


def verdict(value: float, target: str) -> str:
    """``"met"`` or ``"NOT met"`` for a target written ``"<= x"`` or ``">= x"``."""
    op, _, bound = target.partition(" ")
    ok = value <= float(bound) if op == "<=" else value >= float(bound)
    return "met" if ok else "NOT met"
