"""Agent ingestion: the metric lines/s a StatsD server takes in without losing one.

Issue #6 asks for conveyor's agent, with one and with two ``--workers``, against Etsy's
``statsd`` (npm), collectd's statsd plugin and netdata's statsd server (both Debian), on
the same generated load in the same run, kernel drops counted too.

The load: ``DISTINCT_PACKETS`` datagrams of at most ``PACKET_BYTES`` bytes, built once
from a fixed seed, of plain StatsD lines every one of these servers parses: counters
``app.http.requests.NN:1|c`` and timers ``app.http.latency.NN:V|ms``, half each at
random, over ``NAMES`` names of each kind (a bounded set: 128 series in all). V runs
from 1.0 to 999.9 with one decimal (collectd truncates timer values to whole
milliseconds and ignores those under 1 ms). A separate generator process sends the
datagrams in a cycle over ``SOCKETS`` connected UDP sockets (distinct source ports, as
that many client processes would; the kernel spreads them over conveyor's
``SO_REUSEPORT`` workers by a hash of the source port), paced: it wakes at most every
0.5 ms and sends what is due by then.

Counting: every counter line adds 1 and every timer line one sample, so a server's
ingested lines are the sum of its counters plus the sample counts of its timers over
the load's names, read from the server's own output: conveyor's ``--jsonl`` file, a
small backend for Etsy's statsd (``bench/agent/peers/etsy_totals_backend.js``),
collectd's ``csv`` plugin (cumulative ``derive`` counters, per-interval timer counts)
and netdata's ``allmetrics`` API ``as-collected`` (cumulative counter values and timer
event counts). Lost = sent - ingested. Kernel drops: the ``drops`` column of
``/proc/net/udp`` for the server's socket(s), before and after each step.

Loss-free, per step: no line lost (no tolerance), and the server kept up: at its last
flush in the step it had aggregated all but at most ``MAX_BACKLOG`` seconds' worth of
what had been sent by then (a deep buffer, such as conveyor's ring and 8 MiB socket
buffer, hides an overload for seconds; a step too short to fill it would otherwise
pass).

The search, per server and round: a fresh instance on its own loopback port and
temporary directory, flushing every second; a warm-up at a low rate that must lose
nothing (it checks the counting); then steps of ``--step-seconds``, doubling the offered
rate from ``--start`` until a step is not loss-free, then bisecting geometrically
between the last loss-free and the first failed rate until they are within
``--precision`` of each other. After each step the script waits until the socket's
queue is empty and the server's totals have reached what was sent or stopped moving.
Servers run in a rotated order each round; the tables give the median [min-max] over
the rounds, and ratios to Etsy's statsd computed per round. Rounds after the first
start their search just below the first round's result.

Run ``bench/agent/ingest.py`` (``--quick``: a smoke run; ``--micro``: only the
parse/aggregate micro-benchmark). A full run publishes (``bench/_charts.py``): the
tables into its block of docs/benchmarks.md, the chart docs/benchmarks/agent-ingest.png
and the data docs/benchmarks/data/agent-ingest.json; ``--no-publish`` keeps them out,
and ``--quick`` or ``--servers`` runs do not publish unless asked to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from _charts import Bar, Figure, Panel, Role, add_publish_option, capture, publish, wants_publish
from _stats import environment, load_note, ratios, source_state, summarize, table

ROOT = Path(__file__).resolve().parents[2]
#: The code measured (whose git state the published results name).
CODE = ("src/conveyor/agent", "src/conveyor/protocol", "bench/agent")
ETSY_BACKEND = ROOT / "bench" / "agent" / "peers" / "etsy_totals_backend.js"

HOST = "127.0.0.1"
PREFIX = "app.http."
COUNTER_NAME = "app.http.requests.{:02d}"
TIMER_NAME = "app.http.latency.{:02d}"
NAMES = 64
PACKET_BYTES = 1400
# 2,048 datagrams hold some 50,000 timer lines, far more than any cache in the parser:
# a timer line seen again finds nothing remembered, as with real measurements.
DISTINCT_PACKETS = 2048
SOCKETS = 64
SEED = 6
FLUSH_INTERVAL = 1.0
WARM_UP_RATE = 20_000.0  # lines/s, for 1 s
MIN_SLEEP = 0.0005
SETTLE_QUIET = 2.5  # seconds the totals must stay put (2.5 flush intervals)
SETTLE_DEADLINE = 30.0
# A step keeps up if, at the server's last flush in it, what it had not aggregated yet
# is at most this many seconds of the load (a GC pause, a flush): 0.1 s of backlog
# built over the 2 s or more before that flush means the server runs at least 95 % as
# fast as the load.
MAX_BACKLOG = 0.1
GENERATOR_SHORTFALL = 0.9  # below this share of the asked rate, the generator is the limit

SERVERS = ("conveyor-1", "conveyor-2", "etsy-statsd", "collectd", "netdata")
REFERENCE = "etsy-statsd"


class BenchError(Exception):
    """A server that cannot be run or counted (reported in the table, not a figure)."""


# -- the load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    data: bytes
    counters: int  # counter lines
    timers: int  # timer lines

    @property
    def lines(self) -> int:
        return self.counters + self.timers


def build_packets(seed: int = SEED) -> list[Packet]:
    """The load's datagrams: lines added at random until the next would not fit."""
    rng = random.Random(seed)
    packets = []
    for _ in range(DISTINCT_PACKETS):
        lines: list[str] = []
        counters = timers = 0
        size = -1  # no newline before the first line
        while True:
            if rng.random() < 0.5:
                line = f"{COUNTER_NAME.format(rng.randrange(NAMES))}:1|c"
                is_counter = True
            else:
                value = rng.randrange(10, 10_000) / 10
                line = f"{TIMER_NAME.format(rng.randrange(NAMES))}:{value:.1f}|ms"
                is_counter = False
            if size + 1 + len(line) > PACKET_BYTES:
                break
            size += 1 + len(line)
            lines.append(line)
            counters += is_counter
            timers += not is_counter
        packets.append(Packet("\n".join(lines).encode(), counters, timers))
    return packets


def generator_main(port: int, sockets: int, seed: int) -> None:
    """The generator process: ``send <packets/s> <seconds>`` on stdin, one JSON line back."""
    packets = build_packets(seed)
    datas = [packet.data for packet in packets]
    counter_lines = [packet.counters for packet in packets]
    timer_lines = [packet.timers for packet in packets]
    socks = []
    for _ in range(sockets):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((HOST, port))
        socks.append(sock)
    sends = [sock.send for sock in socks]
    position = 0
    print("ready", flush=True)
    for command in sys.stdin:
        words = command.split()
        if not words or words[0] != "send":
            break
        pps, seconds = float(words[1]), float(words[2])
        sent = attempted = errors = counters = timers = 0
        cpu = time.process_time()
        wall_start = time.time()
        start = time.perf_counter()
        end = start + seconds
        total = max(1, int(pps * seconds))
        while attempted < total:
            now = time.perf_counter()
            if now >= end:
                break
            due = min(total, int((now - start) * pps) + 1)
            while attempted < due:
                index = position % DISTINCT_PACKETS
                try:
                    sends[attempted % sockets](datas[index])
                except OSError:
                    errors += 1
                else:
                    sent += 1
                    counters += counter_lines[index]
                    timers += timer_lines[index]
                attempted += 1
                position += 1
            next_due = start + attempted / pps
            time.sleep(max(MIN_SLEEP, min(next_due, end) - time.perf_counter()))
        elapsed = time.perf_counter() - start
        result = {
            "packets": sent,
            "counters": counters,
            "timers": timers,
            "errors": errors,
            "start": wall_start,
            "elapsed": elapsed,
            "cpu": time.process_time() - cpu,
        }
        print(json.dumps(result), flush=True)


@dataclass(frozen=True)
class Sent:
    packets: int
    counters: int
    timers: int
    errors: int
    start: float  # unix seconds
    elapsed: float
    cpu: float

    @property
    def lines(self) -> int:
        return self.counters + self.timers


class Generator:
    """The parent's handle on a generator process aimed at one server's port."""

    def __init__(self, port: int) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--generator", str(port), str(SOCKETS), str(SEED)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "ready":
            self.close()
            raise BenchError("the load generator did not start")

    def send(self, packets_per_second: float, seconds: float) -> Sent:
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"send {packets_per_second} {seconds}\n")
        process.stdin.flush()
        answer = process.stdout.readline()
        if not answer:
            raise BenchError("the load generator died")
        return Sent(**json.loads(answer))

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.close()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- what the kernel says ---------------------------------------------------------------


@dataclass(frozen=True)
class SocketState:
    sockets: int
    drops: int  # datagrams dropped: receive buffer full
    queued: int  # bytes waiting in the receive queues


def udp_state(port: int) -> SocketState:
    """The UDP sockets bound to ``HOST:port``, from /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    sockets = drops = queued = 0
    with open("/proc/net/udp", encoding="ascii") as rows:
        next(rows, None)
        for row in rows:
            fields = row.split()
            if len(fields) >= 13 and fields[1] == local:
                sockets += 1
                drops += int(fields[12])
                queued += int(fields[4].split(":")[1], 16)
    return SocketState(sockets, drops, queued)


def receive_buffers(port: int) -> list[int]:
    """The receive buffer sizes (bytes) of the sockets on ``port``, from ``ss``."""
    try:
        out = subprocess.run(
            ["ss", "-Huamn", f"sport = :{port}"],
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(size) for size in re.findall(r"\brb(\d+)", out)]


def free_port() -> int:
    """A UDP and TCP port nobody uses now on HOST (the kernel's pick)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
            return port


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """``root`` and every process descending from it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (all their threads), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _CLOCK_TICKS


# -- the servers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Lines a server has aggregated, as of ``at`` (unix seconds: the flush, or the
    collection, that these figures come from)."""

    counters: int
    timers: int
    at: float

    @property
    def lines(self) -> int:
        return self.counters + self.timers


def _ensure_peer(name: str) -> str:
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "tools" / "ensure-peer"), name],
            check=False,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise BenchError(f"tools/ensure-peer {name}: {error}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or ["failed"]
        raise BenchError(f"tools/ensure-peer {name}: {reason[0]}")
    return done.stdout.strip()


def _output(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (done.stdout + done.stderr).strip() or "unknown"


class Server:
    """A server under test: its own directory, loopback port and process group."""

    name = ""
    label = ""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.sockets = 1
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.pids: list[int] = []

    # Set up by the subclasses.
    def command(self) -> list[str]:
        raise NotImplementedError

    def totals(self) -> Totals:
        raise NotImplementedError

    def ready(self) -> bool:
        return True

    def start(self, timeout: float = 60.0) -> None:
        self._log = open(self.directory / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,  # its own process group: stop() ends all of it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with {self._process.returncode}: {self.tail()}"
                )
            if udp_state(self.port).sockets >= self.sockets and self.ready():
                self.pids = process_tree(self._process.pid)
                return
            time.sleep(0.1)
        raise BenchError(f"{self.label} did not listen on udp {self.port} in {timeout:g} s")

    def tail(self, lines: int = 3) -> str:
        try:
            text = (self.directory / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Helpers left in the group (netdata's spawn server) go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


class _JsonLinesReader:
    """Reads a growing JSON-lines file incrementally, complete lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_records(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


class Conveyor(Server):
    def __init__(self, directory: Path, port: int, workers: int) -> None:
        super().__init__(directory, port)
        self.name = f"conveyor-{workers}"
        self.label = f"conveyor --workers {workers}"
        self.sockets = workers
        self.workers = workers
        self._jsonl = _JsonLinesReader(directory / "flushes.jsonl")
        self._counters = 0.0
        self._timers = 0.0
        self._at = 0.0

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "conveyor",
            "agent",
            "--listen",
            f"udp://{HOST}:{self.port}",
            "--jsonl",
            str(self._jsonl.path),
            "--flush-interval",
            str(FLUSH_INTERVAL),
            "--prometheus",
            "off",
            "--workers",
            str(self.workers),
        ]

    def ready(self) -> bool:
        return "listening on" in self.tail(20)

    def totals(self) -> Totals:
        for record in self._jsonl.new_records():
            self._at = max(self._at, record.get("timestamp", 0.0))
            name = record.get("name", "")
            if not name.startswith(PREFIX):
                continue
            if record["kind"] == "counter":
                self._counters += record["value"]
            elif record["kind"] == "timing":
                self._timers += record["value"]
        return Totals(round(self._counters), round(self._timers), self._at)


class EtsyStatsd(Server):
    name = REFERENCE
    label = "etsy statsd"

    def __init__(self, directory: Path, port: int) -> None:
        super().__init__(directory, port)
        self._script = _ensure_peer("etsy-statsd")
        self._totals = _JsonLinesReader(directory / "totals.jsonl")
        self._counters = 0.0
        self._timers = 0.0
        self._at = 0.0

    def command(self) -> list[str]:
        config = {
            "port": self.port,
            "address": HOST,
            "mgmt_port": free_port(),
            "mgmt_address": HOST,
            "flushInterval": int(FLUSH_INTERVAL * 1000),
            "backends": [str(ETSY_BACKEND)],
            "totals": {"path": str(self._totals.path), "prefix": PREFIX},
        }
        path = self.directory / "config.js"
        path.write_text(json.dumps(config, indent=2) + "\n")
        return ["node", self._script, str(path)]

    def totals(self) -> Totals:
        for record in self._totals.new_records():
            self._counters += sum(record["counters"].values())
            self._timers += sum(record["timers"].values())
            self._at = record["at"]
        return Totals(round(self._counters), round(self._timers), self._at)

    @staticmethod
    def version() -> str:
        try:
            package = Path(_ensure_peer("etsy-statsd")).parent / "package.json"
            found = json.loads(package.read_text())["version"]
        except (BenchError, OSError, ValueError, KeyError):
            found = "unknown"
        return f"etsy statsd {found} on node {_output(['node', '--version'])}"


class Collectd(Server):
    name = "collectd"
    label = "collectd statsd"
    # One file per value and day: derive-<counter>-<date> holds the counter's running
    # total, gauge-<timer>-count-<date> the timer's sample count per interval.
    _COUNTER_FILE = re.compile(r"derive-(" + re.escape(PREFIX) + r".*)-\d{4}-\d{2}-\d{2}")
    _TIMER_COUNT_FILE = re.compile(r"gauge-(" + re.escape(PREFIX) + r".*)-count-\d{4}-\d{2}-\d{2}")

    def __init__(self, directory: Path, port: int) -> None:
        super().__init__(directory, port)
        self._binary = _ensure_peer("collectd")
        self._csv = directory / "csv"

    def command(self) -> list[str]:
        config = f"""\
Hostname "bench"
FQDNLookup false
Interval {FLUSH_INTERVAL:g}
BaseDir "{self.directory}"
PIDFile "{self.directory}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin logfile
<Plugin logfile>
  LogLevel info
  File STDERR
</Plugin>
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "{HOST}"
  Port "{self.port}"
  TimerCount true
</Plugin>
<Plugin csv>
  DataDir "{self._csv}"
  StoreRates false
</Plugin>
"""
        path = self.directory / "collectd.conf"
        path.write_text(config)
        return [self._binary, "-f", "-C", str(path)]

    def totals(self) -> Totals:
        # Rows per series (a new file each day): (epoch, value).
        series: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for path in self._csv.glob("*/statsd/*"):
            kind, match = "counter", self._COUNTER_FILE.fullmatch(path.name)
            if match is None:
                kind, match = "timer", self._TIMER_COUNT_FILE.fullmatch(path.name)
            if match is None:
                continue
            key = (kind, match[1])
            try:
                text = path.read_text()
            except OSError:
                continue
            for row in text[: text.rfind("\n") + 1].splitlines()[1:]:  # whole rows only
                epoch, _, value = row.partition(",")
                if value and value != "nan":
                    series.setdefault(key, []).append((float(epoch), float(value)))
        if not series:
            return Totals(0, 0, 0.0)
        # As of the last interval every series has written (the same dispatch writes
        # every file within milliseconds; the next one comes an interval later).
        at = min(max(epoch for epoch, _ in rows) for rows in series.values())
        limit = at + FLUSH_INTERVAL / 2
        counters = timers = 0.0
        for (kind, _), rows in series.items():
            if kind == "counter":
                counters += max((row for row in rows if row[0] <= limit), default=(0.0, 0.0))[1]
            else:
                timers += sum(value for epoch, value in rows if epoch <= limit)
        return Totals(round(counters), round(timers), at)

    @staticmethod
    def version() -> str:
        version = _output(["dpkg-query", "-W", "-f", "${Version}", "collectd-core"])
        return f"collectd {version} (Debian collectd-core), statsd plugin"


class Netdata(Server):
    name = "netdata"
    label = "netdata statsd"

    _ROW = re.compile(
        r'^netdata_statsd_\S*\{chart="statsd_(?P<name>[^"]+)_(?P<kind>counter|timer)",'
        r'[^}]*dimension="(?P<dimension>[^"]+)"\} (?P<value>\S+) (?P<at>\d+)'
    )

    def __init__(self, directory: Path, port: int) -> None:
        super().__init__(directory, port)
        self._binary = _ensure_peer("netdata")
        self._web_port = free_port()
        self._complete = False  # once every series has been seen, a read must show all
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def command(self) -> list[str]:
        d = self.directory
        for sub in ("cache", "lib", "log", "plugins", "stock", "health.d"):
            (d / sub).mkdir(exist_ok=True)
        # Our own instance: every directory in ours, nothing but the statsd server and
        # the web API (for the totals), no other collector, health, ML or cloud, and
        # the default CPU scheduling (netdata otherwise runs at nice 19, batch).
        config = f"""\
[global]
\tprocess scheduling policy = keep
\trun as user = {pwd.getpwuid(os.getuid()).pw_name}
\thostname = bench
\tmemory mode = ram
\tupdate every = 1
[directories]
\tconfig = {d}
\tstock config = {d}/stock
\tlog = {d}/log
\tcache = {d}/cache
\tlib = {d}/lib
\tplugins = {d}/plugins
\thome = {d}
\tweb = /usr/share/netdata/web
\tregistry = {d}/lib/registry
\thealth config = {d}/health.d
\tstock health config = {d}/health.d
[logs]
\tdebug log = none
\terror = {d}/log/error.log
\taccess = none
[web]
\tbind to = {HOST}:{self._web_port}
[plugins]
\tproc = no
\tdiskspace = no
\tcgroups = no
\ttc = no
\tidlejitter = no
\tchecks = no
\ttimex = no
\tenable running new plugins = no
\tstatsd = yes
[statsd]
\tenabled = yes
\tupdate every (flushInterval) = {FLUSH_INTERVAL:g}
\tbind to = udp:{HOST}:{self.port}
\tadd dimension for number of events received = yes
[health]
\tenabled = no
[ml]
\tenabled = no
[registry]
\tenabled = no
[cloud]
\tenabled = no
"""
        path = d / "netdata.conf"
        path.write_text(config)
        return [self._binary, "-D", "-c", str(path)]

    def _get(self, path: str) -> str:
        url = f"http://{HOST}:{self._web_port}{path}"
        with self._opener.open(url, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def ready(self) -> bool:
        try:
            self._get("/api/v1/info")
        except OSError:
            return False
        return True

    def totals(self) -> Totals:
        # The API shows each chart as last collected, one chart after the other, and
        # under load it may answer with some charts missing: read again until every
        # series is there (or none yet) and all were collected in the same pass, so
        # that the figures are those of one moment.
        for _ in range(100):
            try:
                text = self._get("/api/v1/allmetrics?format=prometheus&source=as-collected")
            except OSError as error:
                raise BenchError(f"netdata's API did not answer: {error}") from None
            counters = timers = series = 0
            times = []
            for row in text.splitlines():
                match = self._ROW.match(row)
                if match is None or not match["name"].startswith(PREFIX):
                    continue
                if match["kind"] == "counter" and match["dimension"] == "counter":
                    counters += int(float(match["value"]))
                elif match["kind"] == "timer" and match["dimension"] == "events":
                    timers += int(float(match["value"]))
                else:
                    continue
                series += 1
                times.append(int(match["at"]) / 1000)  # milliseconds
            if series == 0 and not self._complete:
                return Totals(0, 0, 0.0)  # nothing received yet
            if series == 2 * NAMES and max(times) - min(times) < FLUSH_INTERVAL / 2:
                self._complete = True
                return Totals(counters, timers, min(times))
            time.sleep(0.05)
        raise BenchError(f"netdata's API gave {series} of {2 * NAMES} series, or not of one moment")

    @staticmethod
    def version() -> str:
        version = _output(["dpkg-query", "-W", "-f", "${Version}", "netdata-core"])
        return f"netdata {version} (Debian netdata-core), its statsd server"


def make_server(name: str, directory: Path, port: int) -> Server:
    if name.startswith("conveyor-"):
        return Conveyor(directory, port, int(name.rpartition("-")[2]))
    if name == "etsy-statsd":
        return EtsyStatsd(directory, port)
    if name == "collectd":
        return Collectd(directory, port)
    if name == "netdata":
        return Netdata(directory, port)
    raise ValueError(name)


LABELS = {
    "conveyor-1": "conveyor --workers 1",
    "conveyor-2": "conveyor --workers 2",
    "etsy-statsd": EtsyStatsd.label,
    "collectd": Collectd.label,
    "netdata": Netdata.label,
}


# -- one step, one search ---------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    asked: float  # lines/s
    lines_per_s: float  # what the generator achieved
    packets_per_s: float
    sent: int
    ingested: int
    lost: int
    kernel_drops: int  # datagrams
    backlog: float | None  # seconds of load not yet aggregated late in the step
    server_cores: float  # while the load was sent
    server_us_per_line: float  # CPU from the start of the step until it settled
    generator_cores: float
    settle_seconds: float
    generator_limited: bool

    @property
    def keeps_up(self) -> bool:
        return self.backlog is not None and self.backlog <= MAX_BACKLOG

    @property
    def loss_free(self) -> bool:
        return self.lost == 0 and self.keeps_up


def _settle(server: Server, expected: int) -> tuple[Totals, float]:
    """Wait until ``server`` has counted ``expected`` lines, or its socket queue is empty
    and its totals have not moved for ``SETTLE_QUIET`` seconds."""
    started = time.monotonic()
    last = server.totals()
    last_change = time.monotonic()
    while True:
        if last.lines >= expected:
            return last, time.monotonic() - started
        now = time.monotonic()
        if now - last_change >= SETTLE_QUIET and udp_state(server.port).queued == 0:
            return last, now - started
        if now - started > SETTLE_DEADLINE:
            return last, now - started
        time.sleep(0.2)
        current = server.totals()
        if current.lines != last.lines:
            last, last_change = current, time.monotonic()
        else:
            last = current


def run_step(
    server: Server, generator: Generator, lines_per_packet: float, rate: float, seconds: float
) -> Step:
    before = server.totals()
    drops_before = udp_state(server.port).drops
    cpu_before = cpu_seconds(server.pids)
    sent = generator.send(rate / lines_per_packet, seconds)
    cpu_window = cpu_seconds(server.pids) - cpu_before
    late = server.totals()  # as of the server's last flush before the load stopped
    after, waited = _settle(server, before.lines + sent.lines)
    cpu_all = cpu_seconds(server.pids) - cpu_before
    ingested = after.lines - before.lines
    if ingested > sent.lines:
        raise BenchError(
            f"{server.label} counted {ingested} lines for {sent.lines} sent: the count is wrong"
        )
    lines_per_s = sent.lines / sent.elapsed
    # A deep buffer (conveyor's ring and 8 MiB socket buffer: some 400,000 lines) hides
    # an overload for seconds, so no loss is not enough: the server must also have
    # aggregated, by its last flush in the step, about all that had been sent by then.
    backlog = None
    into_step = late.at - sent.start
    if 1.0 <= into_step <= sent.elapsed + 0.5:
        sent_by_then = sent.lines * min(1.0, into_step / sent.elapsed)
        backlog = max(0.0, sent_by_then - (late.lines - before.lines)) / lines_per_s
    return Step(
        asked=rate,
        lines_per_s=lines_per_s,
        packets_per_s=sent.packets / sent.elapsed,
        sent=sent.lines,
        ingested=ingested,
        lost=sent.lines - ingested,
        kernel_drops=udp_state(server.port).drops - drops_before,
        backlog=backlog,
        server_cores=cpu_window / sent.elapsed,
        server_us_per_line=cpu_all / max(1, ingested) * 1e6,
        generator_cores=sent.cpu / sent.elapsed,
        settle_seconds=waited,
        generator_limited=lines_per_s < GENERATOR_SHORTFALL * rate or sent.errors > 0,
    )


@dataclass
class Search:
    server: str
    round: int
    rate: float = 0.0  # the highest loss-free lines/s
    packets_per_s: float = 0.0
    generator_limited: bool = False
    best: Step | None = None  # the step at that rate
    first_lossy: Step | None = None
    receive_buffers: list[int] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    error: str | None = None


def search(
    name: str,
    round_number: int,
    start: float,
    *,
    precision: float,
    seconds: float,
    max_rate: float,
    lines_per_packet: float,
) -> Search:
    result = Search(name, round_number)
    directory = Path(tempfile.mkdtemp(prefix=f"cvb-ingest-{name}-"))
    port = free_port()
    server: Server | None = None
    generator: Generator | None = None
    try:
        server = make_server(name, directory, port)
        server.start()
        result.receive_buffers = receive_buffers(port)
        generator = Generator(port)
        warm = run_step(server, generator, lines_per_packet, WARM_UP_RATE, 1.0)
        if warm.lost:
            raise BenchError(
                f"lost {warm.lost} of {warm.sent} lines at {WARM_UP_RATE:,.0f} lines/s "
                f"(warm-up): the count does not work; {server.tail()}"
            )

        def step(rate: float) -> Step:
            assert server is not None and generator is not None
            outcome = run_step(server, generator, lines_per_packet, rate, seconds)
            result.steps.append(outcome)
            if outcome.loss_free:
                verdict = "ok"
            elif outcome.lost:
                verdict = f"lost {outcome.lost / outcome.sent:.3%}"
            elif outcome.backlog is None:
                verdict = "no flush late in the step"
            else:
                verdict = f"no loss, but {outcome.backlog:.2f} s behind"
            print(
                f"#   {LABELS[name]:22} round {round_number}: asked {rate:>11,.0f} "
                f"sent {outcome.lines_per_s:>11,.0f} lines/s, {verdict}, kernel drops "
                f"{outcome.kernel_drops}, server {outcome.server_cores:.2f} cores "
                f"{outcome.server_us_per_line:.2f} us/line, generator "
                f"{outcome.generator_cores:.2f} cores",
                file=sys.stderr,
                flush=True,
            )
            return outcome

        good: Step | None = None
        bad: Step | None = None
        rate = start
        while True:  # bracket
            outcome = step(rate)
            if outcome.loss_free:
                good = outcome
                if bad is not None or outcome.generator_limited or rate * 2 > max_rate:
                    break
                rate *= 2
            else:
                bad = outcome
                if good is not None or rate / 2 < WARM_UP_RATE:
                    break
                rate /= 2
        while (
            good is not None
            and bad is not None
            and not good.generator_limited
            and bad.asked / good.asked > precision
        ):
            outcome = step(math.sqrt(good.asked * bad.asked))
            if outcome.loss_free:
                good = outcome
            else:
                bad = outcome
        if good is not None:
            result.rate = good.lines_per_s
            result.packets_per_s = good.packets_per_s
            result.best = good
            result.generator_limited = good.generator_limited
        result.first_lossy = bad
    except BenchError as error:
        result.error = str(error)
        print(f"#   {LABELS[name]}: {error}", file=sys.stderr, flush=True)
    finally:
        if generator is not None:
            generator.close()
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return result


# -- the micro-benchmark ----------------------------------------------------------------


def micro(repeats: int = 15) -> dict[str, float]:
    """Microseconds per line to parse, to aggregate, and both, over the load's packets:
    the CPU time of this thread (what other processes take does not count), best of
    ``repeats`` passes (the least disturbed)."""
    from conveyor.agent._aggregate import Aggregator
    from conveyor.protocol import parse_packet

    datas = [packet.data for packet in build_packets()]
    lines = sum(packet.count(b"\n") + 1 for packet in datas)
    parsed = [parse_packet(data) for data in datas]

    def parse() -> None:
        for data in datas:
            parse_packet(data)

    def aggregate() -> None:
        ingest = Aggregator().ingest
        for result in parsed:
            ingest(result)

    def both() -> None:
        ingest = Aggregator().ingest
        for data in datas:
            ingest(parse_packet(data))

    figures = {}
    for label, work in (("parse", parse), ("aggregate", aggregate), ("parse+aggregate", both)):
        best = math.inf
        for _ in range(repeats):
            started = time.thread_time()
            work()
            best = min(best, time.thread_time() - started)
        figures[label] = best / lines * 1e6
    return figures


# -- the report -------------------------------------------------------------------------


def _size(size: int) -> str:
    return f"{size / 1024 / 1024:g} MiB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KiB"


def _failure(step: Step, lines_per_packet: float) -> str:
    """Why a step was not loss-free, in a few words."""
    if step.lost:
        kernel = min(1.0, step.kernel_drops * lines_per_packet / step.lost)
        return f"lost {step.lost / step.sent:.2%} ({kernel:.0%} in the kernel)"
    if step.backlog is None:
        return "no loss, no flush late in the step"
    return f"no loss, {step.backlog:.2f} s behind"


def _k(value: float) -> str:
    return f"{value / 1000:,.0f}k"


def report(
    results: list[Search],
    servers: Sequence[str],
    lines_per_packet: float,
) -> tuple[str, dict[str, list[float]]]:
    """The result tables (Markdown, with the verdicts on the targets) and each server's
    loss-free rate per round (lines/s)."""
    by_server: dict[str, list[Search]] = {name: [] for name in servers}
    for result in results:
        by_server[result.server].append(result)
    reference = {
        r.round: r.rate for r in by_server.get(REFERENCE, []) if r.error is None and r.rate
    }
    rates: dict[str, list[float]] = {}
    rows = []
    for name in servers:
        found = [r for r in by_server[name] if r.error is None and r.rate > 0]
        rates[name] = [r.rate for r in found]
        errors = [r.error for r in by_server[name] if r.error is not None]
        if not found:
            rows.append([LABELS[name], "failed: " + (errors[0] if errors else "no loss-free rate")])
            continue
        best = [r.best for r in found if r.best is not None]
        paired = [r for r in found if r.round in reference]
        versus = (
            summarize(ratios([r.rate for r in paired], [reference[r.round] for r in paired]))
            if paired
            else None
        )
        capped = " (the generator's limit)" if any(r.generator_limited for r in found) else ""
        rows.append(
            [
                LABELS[name],
                summarize(r.rate for r in found).fmt(0, 1e-3) + capped,
                summarize(r.packets_per_s for r in found).fmt(1, 1e-3),
                versus.fmt(2) if versus else "-",
                summarize(step.server_cores for step in best).fmt(2),
                summarize(step.server_us_per_line for step in best).fmt(2),
            ]
        )
        if len(found) < len(by_server[name]):
            rows[-1][0] += f" ({len(by_server[name]) - len(found)} round(s) failed)"
    headers = (
        "server",
        "loss-free klines/s",
        "kdatagrams/s",
        "x etsy statsd",
        "server CPU, cores",
        "server CPU, us/line",
    )
    rows = [row + [""] * (len(headers) - len(row)) for row in rows]

    over = []
    for name in servers:
        cells = []
        for r in sorted(by_server[name], key=lambda r: r.round):
            if r.error is not None:
                cells.append(f"{r.round}: failed ({r.error})")
            elif r.first_lossy is None:
                cells.append(f"{r.round}: none")
            else:
                step = r.first_lossy
                cells.append(
                    f"{r.round}: {_k(step.lines_per_s)}, {_failure(step, lines_per_packet)}"
                )
        buffers = sorted({b for r in by_server[name] for b in r.receive_buffers})
        over.append([LABELS[name], ", ".join(_size(b) for b in buffers) or "?", "; ".join(cells)])

    verdicts = []
    two = rates.get("conveyor-2", [])
    if two:
        median_two = statistics.median(two)
        verdicts.append(
            f"- `--workers 2`: {median_two:,.0f} lines/s loss-free (median of {len(two)}); "
            f"target at least 500,000: **{'met' if median_two >= 500_000 else 'not met'}**."
        )
        paired = [r for r in by_server["conveyor-2"] if r.rate and r.round in reference]
        if paired:
            ratio = statistics.median(
                ratios([r.rate for r in paired], [reference[r.round] for r in paired])
            )
            verdicts.append(
                f"- `--workers 2`: {ratio:.2f}x Etsy's statsd (median of the per-round "
                f"ratios); target at least 3x: **{'met' if ratio >= 3 else 'not met'}**."
            )
    text = [
        table(headers, rows),
        "",
        "What happened at the first step above each round's loss-free rate (round: offered "
        "lines/s, outcome), and the receive buffer each server's socket had:",
        "",
        table(("server", "receive buffer", "first step over the limit, per round"), over, "lll"),
    ]
    if verdicts:
        text += ["", "Targets (issue #6):", "", *verdicts]
    return "\n".join(text), rates


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--generator":
        port, sockets, seed = (int(word) for word in sys.argv[2:5])
        generator_main(port, sockets, seed)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (1 round, 2.5 s steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=3.0)
    parser.add_argument(
        "--precision", type=float, default=1.1, help="stop bisecting at this ratio (1.1)"
    )
    parser.add_argument("--start", type=float, default=100_000.0, help="first rate, lines/s")
    parser.add_argument("--max-rate", type=float, default=8_000_000.0, help="lines/s")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--micro", action="store_true", help="only the micro-benchmark")
    add_publish_option(parser, "yes, except with --quick or --servers")
    args = parser.parse_args()
    if args.micro:
        for label, value in micro().items():
            print(f"{label:16} {value:.3f} us/line")
        return
    rounds = 1 if args.quick else args.rounds
    seconds = 2.5 if args.quick else args.step_seconds
    if seconds < 2.0:
        parser.error("--step-seconds must be at least 2: a step must hold a flush 1 s in")
    precision = 1.3 if args.quick else args.precision
    servers: list[str] = list(args.servers)
    if args.publish is None and servers != list(SERVERS):
        args.publish = False  # a partial run does not replace the published one

    packets = build_packets()
    lines_per_packet = sum(p.lines for p in packets) / len(packets)
    started = time.monotonic()
    load_at_start = os.getloadavg()[0]
    print(environment())
    print(f"# {source_state(*CODE)}")
    micro_figures = micro()
    versions = [f"conveyor on CPython {platform.python_version()}"]
    if "etsy-statsd" in servers:
        versions.append(EtsyStatsd.version())
    if "collectd" in servers:
        versions.append(Collectd.version())
    if "netdata" in servers:
        versions.append(Netdata.version())

    results: list[Search] = []
    first: dict[str, float] = {}
    for round_number in range(1, rounds + 1):
        shift = (round_number - 1) % len(servers)
        for name in servers[shift:] + servers[:shift]:
            begin = first[name] / 1.4 if first.get(name) else args.start
            result = search(
                name,
                round_number,
                max(begin, WARM_UP_RATE * 2),
                precision=precision,
                seconds=seconds,
                max_rate=args.max_rate,
                lines_per_packet=lines_per_packet,
            )
            results.append(result)
            if round_number == 1 and result.rate:
                first[name] = result.rate
            print(
                f"# {LABELS[name]:22} round {round_number}: "
                + (result.error or f"{result.rate:,.0f} lines/s loss-free"),
                file=sys.stderr,
                flush=True,
            )
    minutes = (time.monotonic() - started) / 60
    params = (
        f"rounds: {rounds}; steps of {seconds:g} s; bisection to {precision:g}x; "
        f"{DISTINCT_PACKETS} datagrams of {lines_per_packet:.1f} lines on average; "
        f"{minutes:.1f} min in all"
    )
    tables, rates = report(results, servers, lines_per_packet)
    with capture() as printed:
        print("Peers: " + "; ".join(versions) + ".")
        print()
        print(
            "Parser and aggregator alone (`--micro`, this run, CPU time of one thread, best "
            "of 15 passes over the same datagrams): "
            + ", ".join(f"{label} {value:.2f} us" for label, value in micro_figures.items())
            + " per line."
        )
        print()
        print(tables)
    print(f"# {params}")
    print(load_note(load_at_start))
    if wants_publish(args):
        reference = statistics.median(rates[REFERENCE]) if rates.get(REFERENCE) else 0.0
        bars = []
        for name in servers:
            values = rates.get(name, [])
            note = ""
            if values and reference and name != REFERENCE:
                note = f"{statistics.median(values) / reference:.1f}x etsy"
            role: Role = "conveyor" if name.startswith("conveyor") else "peer"
            bars.append(Bar(LABELS[name], values, role, note))
        figure = Figure(
            "agent-ingest",
            "Agent ingestion: plain StatsD over loopback UDP, the highest rate with no line lost",
            [
                Panel(
                    f"loss-free rate ({seconds:g} s steps; {lines_per_packet:.0f}-line datagrams)",
                    "metric lines/s",
                    bars,
                    better="higher",
                )
            ],
        )
        publish(
            "agent-ingest",
            "bench/agent/ingest.py",
            sys.argv[1:],
            load_at_start,
            [figure],
            printed.getvalue(),
            params=params,
            code=CODE,
        )


if __name__ == "__main__":
    main()
