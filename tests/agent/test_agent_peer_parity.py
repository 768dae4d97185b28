"""The same stream sent to ``conveyor agent`` and to Etsy's statsd gives the same
counters, gauges, sets and timer statistics (issue #6).

The peer is npm's ``statsd@0.9.0`` (Etsy's), installed by ``tools/ensure-peer
etsy-statsd`` and run with ``node`` on free loopback ports, with
``tests/agent/peers/etsy_json_backend.js`` as its only backend: that backend appends
each flush, exactly as statsd's ``lib/process_metrics.js`` computed it, as one JSON
line. Without node or the peer the tests are skipped, except under ``CI=true``, where
they fail.

What the stream holds is what statsd 0.9's ``handlePacket`` and
``lib/helpers.js:is_valid_packet`` read the same way as conveyor: ``name:value|type``
lines, one value per line, types ``c``, ``g``, ``ms`` and ``s``, an optional
``|@rate``, several lines per datagram. Not DogStatsD tags (statsd folds ``|#a:b``
into the name as ``;a=b``), not packed values (``t:1:2|ms``, which statsd reads as
bad lines), not ``h`` or ``d`` (statsd counts them as counters), no negative timers
(statsd refuses them). Signed gauges (``+3``, ``-2``) are changes in plain StatsD:
the first case runs conveyor with ``--statsd-dialect``.

Rendez-vous, no sleeps: datagrams go out in batches, and before the next batch the
test polls statsd's management interface (TCP, ``counters``) until it has counted
every line so far; conveyor is then stopped with SIGTERM (its listeners read what the
kernel still holds before the final flush) and statsd with SIGTERM (``process.exit``
runs its final flush in ``process.on('exit')``). Both flush intervals are an hour, so
each server flushes exactly once, at exit, over the whole stream: the test checks
that neither had flushed before SIGTERM and that each flushed exactly once after.

Statistics compared: counter totals and per-second rates (each over its own interval:
statsd divides by its configured ``flushInterval``, conveyor by the time the interval
really lasted), last gauge values, distinct set members, and for timers ``count``,
``min``/``lower``, ``max``/``upper``, ``avg``/``mean``, ``sum``, ``median`` and
``p95``/``p99`` (``upper_95``/``upper_99``). Exact where the arithmetic is exact (the
values are integers or binary fractions, whose sums do not depend on order); with a
relative tolerance of 1e-12 only for the series built from decimal fractions, whose
sums the two servers add in different orders (statsd sorted, conveyor as received).

One definition differs on purpose (docs/agent.md, "Statistics, defined"): a sampled
timer's ``sum``. statsd adds the values received; conveyor, like the Datadog agent,
weights each by ``1 / rate`` as it does the count, so that ``sum``, ``count`` and
``avg = sum / count`` all describe the full population. With one rate per timer
(what clients send) the averages agree and conveyor's sum is statsd's divided by the
rate; that is what the test checks.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from agent_process_support import (
    AgentProcess,
    poll,
    reason_counts,
    series_records,
    start_agent,
    telemetry_total,
)

from ci_support import missing

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "tools" / "ensure-peer"
ETSY_BACKEND = Path(__file__).resolve().parent / "peers" / "etsy_json_backend.js"
ETSY_FLUSH_INTERVAL_MS = 3_600_000  # no periodic flush during the test: only the one at exit
# conveyor's default percentiles (0.5 "median", 0.95 "p95", 0.99 "p99") in statsd's
# spelling; statsd always reports the median, 50 only adds upper_50.
PERCENT_THRESHOLD = (50, 95, 99)
PROBE = "parity_probe"  # lines sent to statsd alone until it answers on UDP
DATAGRAM_BYTES = 1400
BATCH = 32  # datagrams between two rendez-vous with statsd
TOLERANCE = 1e-12  # relative; only for the decimal-fraction series (see the docstring)


# --- the peer -------------------------------------------------------------------------


def _etsy_statsd() -> tuple[str, str]:
    """``(node, stats.js)``; skip (or, under CI, fail) without them."""
    node = shutil.which("node")
    if node is None:
        missing("Etsy statsd", "node (Node.js) is not on PATH")
    try:
        result = subprocess.run(
            [str(ENSURE), "etsy-statsd"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing("Etsy statsd", f"{ENSURE} could not run: {exc}")
    script = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if result.returncode != 0 or not os.path.isfile(script):
        problem = result.stderr.strip()[-2000:] or f"{ENSURE} printed {script!r}"
        missing("Etsy statsd", problem)
    return node, script


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class EtsyStatsd:
    process: subprocess.Popen[bytes]
    port: int
    mgmt_port: int
    out: Path
    log: Path
    probes_sent: int = 0

    def problem(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return f"statsd exited with {code}:\n{self.log.read_text(errors='replace')[-4000:]}"

    def counters(self) -> dict[str, float] | None:
        """statsd's counters now, from its management interface (None if it is not up)."""
        try:
            with socket.create_connection(("127.0.0.1", self.mgmt_port), timeout=10) as conn:
                conn.sendall(b"counters\n")
                reply = b""
                while not reply.endswith(b"END\n\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return None
        # util.inspect of a flat object: `'quoted.key': 12` or `bare_key: 12`.
        pairs = re.findall(r"'?([\w.;=-]+)'?: (-?[\d.e+-]+)", reply.decode())
        return {key: float(value) for key, value in pairs}

    def lines_seen(self, counters: dict[str, float]) -> float:
        """Lines of the stream statsd has counted (probes left out)."""
        return counters.get("statsd.metrics_received", 0.0) - counters.get(PROBE, 0.0)

    def wait_until_up(self) -> None:
        """The management port answers, and a probe line sent over UDP was counted."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:

            def probe_counted() -> bool | None:
                counters = self.counters()
                if counters is not None and counters.get(PROBE, 0) > 0:
                    return True
                sender.sendto(f"{PROBE}:1|c".encode(), ("127.0.0.1", self.port))
                self.probes_sent += 1
                return None

            poll("statsd to count a probe", probe_counted, self.problem)

    def stop(self) -> dict[str, Any]:
        """SIGTERM; statsd flushes once in its exit handler: that flush."""
        assert not self.out.exists(), "statsd flushed before it was stopped"
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail("statsd did not exit within 30 s of SIGTERM")
        assert self.out.exists(), f"statsd did not flush at exit:\n{self.log.read_text()}"
        flushes = [json.loads(line) for line in self.out.read_text().splitlines()]
        assert len(flushes) == 1, f"statsd flushed {len(flushes)} times, not once at exit"
        flush: dict[str, Any] = flushes[0]
        assert flush["flushInterval"] == ETSY_FLUSH_INTERVAL_MS
        assert flush["pctThreshold"] == list(PERCENT_THRESHOLD)
        return flush


@pytest.fixture
def etsy(tmp_path: Path) -> Iterator[EtsyStatsd]:
    node, script = _etsy_statsd()
    directory = tmp_path / "etsy"
    directory.mkdir()
    port, mgmt_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    out = directory / "flushes.jsonl"
    config = directory / "config.js"
    settings = {
        "address": "127.0.0.1",
        "port": port,
        "mgmt_address": "127.0.0.1",
        "mgmt_port": mgmt_port,
        "flushInterval": ETSY_FLUSH_INTERVAL_MS,
        "percentThreshold": list(PERCENT_THRESHOLD),
        "automaticConfigReload": False,
        "backends": [str(ETSY_BACKEND)],
        "jsonBackend": {"path": str(out)},
    }
    config.write_text(json.dumps(settings, indent=2) + "\n")  # JSON is a JS object literal
    log = directory / "statsd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [node, script, str(config)], stdout=log_file, stderr=subprocess.STDOUT, cwd=directory
        )
    server = EtsyStatsd(process, port, mgmt_port, out, log)
    try:
        server.wait_until_up()
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# --- the stream -----------------------------------------------------------------------


@dataclass
class Expected:
    """What the stream must aggregate to, worked out independently of both servers, so
    that a parity of two wrong answers cannot pass."""

    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    timers: dict[str, list[float]] = field(default_factory=dict)
    timer_rates: dict[str, float] = field(default_factory=dict)
    approximate: set[str] = field(default_factory=set)  # decimal fractions: tolerance


def _number(value: float) -> str:
    """A decimal number both servers read to the same double: no exponent, no
    trailing ``.0``."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _stream(seed: int = 20240606) -> tuple[list[str], Expected, list[str]]:
    """``(lines, expected, bad_lines)``: every line, shuffled; what they aggregate to."""
    rng = random.Random(seed)
    expected = Expected()
    lines: list[str] = []

    def counter(name: str, value: float, rate: float = 1.0) -> None:
        expected.counters[name] = expected.counters.get(name, 0.0) + value / rate
        suffix = "" if rate == 1.0 else f"|@{_number(rate)}"
        lines.append(f"{name}:{_number(value)}|c{suffix}")

    for _ in range(200):
        counter("parity.requests", rng.randint(1, 5))
        counter("parity.sampled", rng.randint(1, 3), rng.choice((0.5, 0.25, 0.125)))
        counter("parity.bytes", rng.randint(0, 4000) / 4)
    for _ in range(50):
        counter("parity.tenth", rng.randint(1, 9), 0.1)
    expected.approximate.add("parity.tenth")  # v / 0.1 against v * (1 / 0.1)

    # Gauges: in order, since the last update wins (shuffled below, but both servers
    # see the one order the datagrams are sent in; `expected` is worked out after).
    gauge_lines: list[str] = []
    for _ in range(50):
        gauge_lines.append(f"parity.queue:{rng.randint(0, 1000)}|g")
        gauge_lines.append(f"parity.temp:{_number(rng.randint(-800, 800) / 8)}|g")
        if rng.random() < 0.3:
            gauge_lines.append(f"parity.level:{rng.randint(0, 100)}|g")
        else:
            gauge_lines.append(f"parity.level:{rng.choice('+-')}{rng.randint(1, 9)}|g")
        gauge_lines.append(f"parity.drift:{rng.choice('+-')}{_number(rng.randint(1, 64) / 16)}|g")
    lines.extend(gauge_lines)

    for _ in range(150):
        member = f"user{rng.randint(0, 39)}"
        expected.sets.setdefault("parity.users", set()).add(member)
        lines.append(f"parity.users:{member}|s")

    def timer(name: str, values: list[float], rate: float = 1.0) -> None:
        expected.timers[name] = values
        expected.timer_rates[name] = rate
        suffix = "" if rate == 1.0 else f"|@{_number(rate)}"
        lines.extend(f"{name}:{_number(value)}|ms{suffix}" for value in values)

    # Sizes where the rank round(q * n) lands on a half (n = 10, 30 and 50 for p95 or
    # p99): statsd's Math.round rounds them up, Python's round() would not.
    for name, n in (("one", 1), ("two", 2), ("ten", 10), ("thirty", 30), ("fifty", 50)):
        timer(f"parity.t.{name}", [rng.randint(0, 500) for _ in range(n)])
    timer("parity.t.odd", [rng.randint(0, 50) for _ in range(37)])  # duplicates too
    timer("parity.t.big", [rng.randint(0, 5000) for _ in range(600)])
    timer("parity.t.frac", [rng.randint(0, 4000) / 16 for _ in range(64)])
    timer("parity.t.sampled", [rng.randint(1, 300) for _ in range(80)], rate=0.25)
    timer("parity.t.decimal", [round(rng.uniform(0, 500), 2) for _ in range(120)])
    expected.approximate.add("parity.t.decimal")

    # Bad in both servers: a value that is not a number, a rate that is not one, no
    # value at all. The rest of their datagrams must still count.
    bad = ["parity.bad:abc|c", "parity.bad:1|c|@abc", "parity_no_value|c"]
    lines.extend(bad)
    rng.shuffle(lines)

    for line in lines:  # the gauges, in the order they are sent
        name, _, rest = line.partition(":")
        raw, _, kind = rest.partition("|")
        if kind != "g":
            continue
        if raw[0] in "+-":
            expected.gauges[name] = expected.gauges.get(name, 0.0) + float(raw)
        else:
            expected.gauges[name] = float(raw)
    return lines, expected, bad


def _datagrams(lines: list[str]) -> list[bytes]:
    """Lines packed into datagrams of at most DATAGRAM_BYTES, newline-separated."""
    datagrams: list[bytes] = []
    current: list[str] = []
    size = 0
    for line in lines:
        if current and size + 1 + len(line) > DATAGRAM_BYTES:
            datagrams.append("\n".join(current).encode())
            current, size = [], 0
        current.append(line)
        size += len(line) + (1 if size else 0)
    if current:
        datagrams.append("\n".join(current).encode())
    return datagrams


def _send_to_both(datagrams: list[bytes], agent: AgentProcess, etsy: EtsyStatsd) -> None:
    """The same datagrams, in the same order, to both; a rendez-vous with statsd after
    each batch so that no receive buffer can overflow."""
    conveyor_address = agent.udp_address()
    sent_lines = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for start in range(0, len(datagrams), BATCH):
            for datagram in datagrams[start : start + BATCH]:
                sender.sendto(datagram, conveyor_address)
                sender.sendto(datagram, ("127.0.0.1", etsy.port))
                sent_lines += len([line for line in datagram.split(b"\n") if line])

            def caught_up(target: int = sent_lines) -> bool | None:
                counters = etsy.counters()
                return True if counters and etsy.lines_seen(counters) >= target else None

            poll(f"statsd to count {sent_lines} lines", caught_up, etsy.problem)
            problem = agent.problem()
            assert problem is None, problem


# --- the comparison -------------------------------------------------------------------


def _same(ours: float, theirs: float, approximate: bool) -> bool:
    if approximate:
        return ours == pytest.approx(theirs, rel=TOLERANCE, abs=TOLERANCE)
    return ours == theirs


def _compare(flush: dict[str, Any], records: list[dict[str, Any]], expected: Expected) -> list[str]:
    """Every difference between statsd's flush, conveyor's and the expectation."""
    ours = series_records(records)
    interval = {record["interval"] for record in records if "interval" in record}
    assert len(interval) == 1, f"conveyor flushed {len(interval)} times, not once at exit"
    (conveyor_interval,) = interval
    etsy_interval = flush["flushInterval"] / 1000
    wrong: list[str] = []

    def check(what: str, mine: float, theirs: float, approximate: bool = False) -> None:
        if not _same(mine, theirs, approximate):
            wrong.append(f"{what}: conveyor {mine!r}, statsd {theirs!r}")

    for name, total in expected.counters.items():
        approximate = name in expected.approximate
        mine = ours.get((name, "counter"))
        if mine is None or name not in flush["counters"]:
            wrong.append(f"counter {name}: conveyor {mine}, statsd {flush['counters'].get(name)}")
            continue
        check(f"counter {name} total", mine["value"], flush["counters"][name], approximate)
        check(f"counter {name} against the stream", mine["value"], total, approximate)
        # Per second, each over its own interval: the same total once multiplied back.
        check(
            f"counter {name} rate x interval",
            mine["rate"] * conveyor_interval,
            flush["counter_rates"][name] * etsy_interval,
            approximate=True,  # a division and a multiplication each side
        )
    for name, value in expected.gauges.items():
        mine = ours.get((name, "gauge"))
        if mine is None or name not in flush["gauges"]:
            wrong.append(f"gauge {name}: conveyor {mine}, statsd {flush['gauges'].get(name)}")
            continue
        check(f"gauge {name}", mine["value"], flush["gauges"][name])
        check(f"gauge {name} against the stream", mine["value"], value)
    for name, members in expected.sets.items():
        mine = ours.get((name, "set"))
        theirs = flush["sets"].get(name)
        if mine is None or theirs is None:
            wrong.append(f"set {name}: conveyor {mine}, statsd {theirs}")
            continue
        check(f"set {name} distinct", mine["value"], len(theirs))
        if set(theirs) != members:
            wrong.append(f"set {name}: statsd's members {sorted(theirs)} are not the stream's")
        check(f"set {name} against the stream", mine["value"], len(members))
    for name, values in expected.timers.items():
        approximate = name in expected.approximate
        rate = expected.timer_rates[name]
        mine = ours.get((name, "timing"))
        theirs = flush["timer_data"].get(name)
        if mine is None or theirs is None:
            wrong.append(f"timer {name}: conveyor {mine}, statsd {theirs}")
            continue
        stats = mine["stats"]
        check(f"timer {name} count", stats["count"], theirs["count"])
        check(f"timer {name} count against the stream", stats["count"], len(values) / rate)
        check(f"timer {name} min", stats["min"], theirs["lower"])
        check(f"timer {name} max", stats["max"], theirs["upper"])
        check(f"timer {name} median", stats["median"], theirs["median"])
        check(f"timer {name} p95", stats["p95"], theirs["upper_95"])
        check(f"timer {name} p99", stats["p99"], theirs["upper_99"])
        check(f"timer {name} avg", stats["avg"], theirs["mean"], approximate)
        # statsd sums the values received; conveyor weights them by 1 / rate.
        check(f"timer {name} sum", stats["sum"], theirs["sum"] / rate, approximate)
        check(
            f"timer {name} rate x interval",
            mine["rate"] * conveyor_interval,
            theirs["count_ps"] * etsy_interval,
            approximate=True,
        )
    known = {
        *((n, "counter") for n in expected.counters),
        *((n, "gauge") for n in expected.gauges),
        *((n, "set") for n in expected.sets),
        *((n, "timing") for n in expected.timers),
    }
    extra = {key for key in ours if key not in known and not key[0].startswith("conveyor.")}
    if extra:
        wrong.append(f"conveyor has series the stream does not: {sorted(extra)}")
    theirs_names = {
        *flush["counters"],
        *flush["gauges"],
        *flush["sets"],
        *flush["timer_data"],
    }
    theirs_extra = {
        name
        for name in theirs_names
        if not name.startswith("statsd.") and name != PROBE and name not in {k[0] for k in known}
    }
    if theirs_extra:
        wrong.append(f"statsd has series the stream does not: {sorted(theirs_extra)}")
    return wrong


def _check_accounting(
    flush: dict[str, Any], records: list[dict[str, Any]], lines: int, bad: int
) -> None:
    """Every line counted once by each server, and the bad ones counted as bad."""
    counters = flush["counters"]
    assert counters["statsd.metrics_received"] - counters.get(PROBE, 0) == lines
    assert counters["statsd.bad_lines_seen"] == bad
    assert telemetry_total(records, "conveyor.agent.lines") == lines
    parse_errors = reason_counts(records, "conveyor.agent.parse_errors")
    assert sum(parse_errors.values()) == bad, parse_errors
    assert telemetry_total(records, "conveyor.agent.listener.kernel_drops") == 0


# --- the cases ------------------------------------------------------------------------


def test_same_stream_same_aggregates_as_etsy_statsd(tmp_path: Path, etsy: EtsyStatsd) -> None:
    lines, expected, bad = _stream()
    datagrams = _datagrams(lines)
    agent = start_agent(tmp_path, ["udp://127.0.0.1:0"], "--statsd-dialect")
    try:
        _send_to_both(datagrams, agent, etsy)
        assert not agent.jsonl.exists(), "conveyor flushed before it was stopped"
        records = agent.stop()
    finally:
        agent.kill()
    flush = etsy.stop()

    _check_accounting(flush, records, len(lines), len(bad))
    assert reason_counts(records, "conveyor.agent.parse_errors") == {
        "bad_value": 1,
        "bad_sample_rate": 1,
        "malformed": 1,
    }
    wrong = _compare(flush, records, expected)
    assert not wrong, "\n".join(wrong)


def test_datadog_client_stream_same_aggregates_as_etsy_statsd(
    tmp_path: Path, etsy: EtsyStatsd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``datadog`` package as the sender: what it sends is captured on a socket of
    the test's own and the very same datagrams go to both servers (its client-side
    sampling is random, so the stream is whatever it chose to send). conveyor reads
    DogStatsD here (no ``--statsd-dialect``), so gauges stay non-negative: a DogStatsD
    ``-3`` is a value, a StatsD ``-3`` a change."""
    from datadog.dogstatsd.base import DogStatsd

    for name in ("DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_TAGS", "DATADOG_TAGS"):
        monkeypatch.delenv(name, raising=False)
    for name in ("DD_ENTITY_ID", "DD_EXTERNAL_ENV", "DD_CARDINALITY", "DATADOG_CARDINALITY"):
        monkeypatch.delenv(name, raising=False)
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as capture:
        capture.bind(("127.0.0.1", 0))
        capture.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        client = DogStatsd(
            host="127.0.0.1",
            port=capture.getsockname()[1],
            disable_telemetry=True,
            origin_detection_enabled=False,
        )
        captured: list[bytes] = []

        def drain() -> None:
            # On loopback a datagram is in the receive queue when sendto returns.
            while True:
                try:
                    captured.append(capture.recv(65536, socket.MSG_DONTWAIT))
                except BlockingIOError:
                    return

        sent = 0
        for _ in range(300):
            client.increment("dd.requests")
            client.increment("dd.sampled", rng.randint(1, 4), sample_rate=0.5)
            client.decrement("dd.balance", rng.randint(1, 3))
            client.gauge("dd.queue", rng.randint(0, 500))
            client.gauge("dd.ratio", rng.randint(0, 64) / 64)
            client.timing("dd.latency", rng.randint(0, 2000))
            client.timing("dd.sampled_latency", rng.randint(0, 2000) / 8, sample_rate=0.5)
            client.set("dd.visitors", f"v{rng.randint(0, 60)}")
            sent += 8
            drain()
        client.increment("dd.end_of_stream")  # one datagram, the last one sent
        client.close_socket()
        capture.settimeout(10)
        while not captured or not captured[-1].startswith(b"dd.end_of_stream:"):
            captured.append(capture.recv(65536))
    datagrams = captured[:-1]
    shape = re.compile(rb"[\w.]+:-?\d+(\.\d+)?\|(c|g|ms)(\|@0\.5)?|[\w.]+:v\d+\|s")
    lines = [line for datagram in datagrams for line in datagram.split(b"\n") if line]
    odd = [line for line in lines if not shape.fullmatch(line)]
    assert not odd, f"the datadog client sent what this test does not expect: {odd[:5]}"
    assert 0.5 * sent < len(lines) <= sent  # client-side sampling dropped some

    expected = Expected()
    for line in lines:
        name, _, rest = line.decode().partition(":")
        raw, kind, *options = rest.split("|")
        rate = float(options[0][1:]) if options else 1.0
        if kind == "c":
            expected.counters[name] = expected.counters.get(name, 0.0) + float(raw) / rate
        elif kind == "g":
            expected.gauges[name] = float(raw)
        elif kind == "s":
            expected.sets.setdefault(name, set()).add(raw)
        else:
            expected.timers.setdefault(name, []).append(float(raw))
            expected.timer_rates[name] = rate

    agent = start_agent(tmp_path, ["udp://127.0.0.1:0"])
    try:
        _send_to_both(datagrams, agent, etsy)
        records = agent.stop()
    finally:
        agent.kill()
    flush = etsy.stop()

    _check_accounting(flush, records, len(lines), 0)
    wrong = _compare(flush, records, expected)
    assert not wrong, "\n".join(wrong)
