"""Fuzzing the agent's network input (issue #6: "nothing crashes the agent").

Two runs:

* ``fuzz/agent_fuzz.py`` (atheris, coverage-guided) for about 20 seconds over the
  parser (both dialects), the aggregator, the flush's renderers and the stream
  framers; any exception or broken invariant is a crash and fails the test. Without
  atheris the test is skipped, except under ``CI=true``, where it fails.
* A live ``conveyor agent`` with a UDP, a TCP and a Unix stream listener, sent
  mutated DogStatsD (bit flips, inserted separators, splices, invalid UTF-8, random
  bytes, oversized frames and lines) for a few seconds. Afterwards it must still be
  running, must still aggregate known-good lines on every listener correctly, must
  have counted every bad line by reason (the expected counts come from parsing what
  was sent, framed as each listener frames it: the test checks the agent's
  accounting end to end, listener to telemetry, not the parser's verdicts, which
  the first run and tests/protocol cover), must have closed exactly the connections
  whose framing broke, and must have logged it all in a handful of rate-limited lines.

Rendez-vous, no sleeps: the agent flushes every 0.1 s into its JSON-lines file; after
each round of traffic the test reads the new records until the agent's own
``conveyor.agent.lines`` telemetry has counted every line sent (which also keeps the
kernel buffers from overflowing).
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from agent_listen_support import socket_dir
from agent_process_support import AgentProcess, poll, reason_counts, series_records, start_agent

from ci_support import missing
from conveyor.agent._listen_framing import (
    DEFAULT_MAX_FRAME,
    Framer,
    FramingError,
    LengthFramer,
    LineFramer,
)
from conveyor.protocol import parse_packet

ROOT = Path(__file__).resolve().parents[2]
FUZZER = ROOT / "fuzz" / "agent_fuzz.py"
FUZZ_SECONDS = 20
NETWORK_SECONDS = 4.0
MAX_LOG_LINES = 20  # the agent's log, whatever it was sent: one line per reason per minute
_LENGTH = struct.Struct("<I")


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_coverage_guided_fuzzer_finds_no_crash(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        missing("atheris", f"{sys.executable} -m pip install atheris (the dev extra, on Linux)")
    workdir = tmp_path / "fuzz"
    result = subprocess.run(
        [sys.executable, str(FUZZER), "--seconds", str(FUZZ_SECONDS), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 100,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in (workdir / "artifacts").iterdir())
    tail = "\n".join(output.splitlines()[-60:])
    assert result.returncode == 0 and not crashes, f"crashes {crashes}:\n{tail}"
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None, tail
    # It really fuzzed: thousands of inputs, beyond the seed corpus.
    assert int(done.group(1)) > 2000, tail


# --- the live agent -------------------------------------------------------------------

BASE_LINES = (
    b"page.views:1|c",
    b"page.views:2|c|@0.5|#env:prod,region:eu",
    b"queue.depth:12|g|#queue:mail",
    b"users.online:alice|s",
    b"request.latency:12.5|ms|@0.25",
    b"request.latency:1:2:3:10|h",
    b"payload.size:1.5e3|d|T1700000000|c:abc",
    b"_e{5,4}:Title|Text|t:warning|#env:prod",
    b"_sc|db.up|2|m:down",
)
INSERTS = (
    b"|", b":", b"#", b"@", b",", b"\n", b"\r", b"\r\n", b"_", b"{", b"}", b"e", b"-",
    b"+", b".", b"\x00", b"\xff", b"\xc3", b"\xe2\x82", b"T", b"c:", b"1e999", b"nan",
    b"99999999999999999999", b"_e{", b"_sc|",
)  # fmt: skip


def _mutate(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        position = rng.randint(0, len(data))
        operation = rng.randrange(7)
        if operation == 0 and data:
            data[position % len(data)] ^= 1 << rng.randrange(8)
        elif operation == 1:
            data[position:position] = rng.choice(INSERTS)
        elif operation == 2:
            del data[position : position + rng.randint(1, 8)]
        elif operation == 3:
            data[position:position] = data[position : position + rng.randint(1, 16)]
        elif operation == 4:
            other = rng.choice(BASE_LINES)
            data[position:] = other[rng.randint(0, len(other)) :]
        elif operation == 5:
            data[position:position] = rng.randbytes(rng.randint(1, 12))
        else:
            del data[position:]
    return bytes(data)


def _packet(rng: random.Random) -> bytes:
    lines = [
        _mutate(rng, line) if rng.random() < 0.7 else line
        for line in rng.choices(BASE_LINES, k=rng.randint(1, 12))
    ]
    if rng.random() < 0.05:
        lines.append(rng.randbytes(rng.randint(1, 200)))
    return b"\n".join(lines) or b"x"


class Expected:
    """What the agent must count: lines and bad lines by reason, from what it gets."""

    def __init__(self) -> None:
        self.lines = 0
        self.errors: Counter[str] = Counter()
        self.framing_errors: Counter[str] = Counter()

    def packet(self, packet: bytes) -> None:
        result = parse_packet(packet)
        self.lines += (
            len(result.metrics)
            + len(result.events)
            + len(result.service_checks)
            + sum(result.errors.values())
        )
        self.errors.update(result.errors)


class Stream:
    """One client connection; ``framer`` frames what it sends as the agent will."""

    def __init__(self, kind: str, address: Any, expected: Expected) -> None:
        self.kind = kind
        self.address = address
        self.expected = expected
        self.sock: socket.socket | None = None
        self.framer: Framer = LineFramer(DEFAULT_MAX_FRAME)

    def _connect(self) -> socket.socket:
        if self.kind == "unixstream":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(self.address)
        else:
            sock = socket.create_connection(self.address, timeout=10)
        if self.kind == "unixstream":
            self.framer = LengthFramer(DEFAULT_MAX_FRAME)
        else:
            self.framer = LineFramer(DEFAULT_MAX_FRAME)
        return sock

    def send(self, data: bytes) -> None:
        """Send ``data``; if it breaks the framing, the agent closes the connection:
        the next send opens a new one."""
        if self.sock is None:
            self.sock = self._connect()
        broken: str | None = None
        try:
            packets = self.framer.feed(data)
        except FramingError as error:
            packets, broken = error.packets, error.reason
        for packet in packets:
            self.expected.packet(packet)
        try:
            self.sock.sendall(data)
        except OSError:
            assert broken is not None, "the agent closed a connection whose framing was fine"
        if broken is not None:
            self.expected.framing_errors[self.kind] += 1
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Flushes:
    """The agent's JSON-lines file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []
        self.lines = 0.0

    def read(self) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            record = json.loads(line)
            self.records.append(record)
            if record.get("name") == "conveyor.agent.lines":
                self.lines += record["value"]

    def wait_for_lines(self, lines: int, agent: AgentProcess) -> None:
        def counted() -> bool | None:
            self.read()
            return True if self.lines >= lines else None

        poll(f"the agent to count {lines} lines", counted, agent.problem)


def _last_gauge(records: list[dict[str, Any]], name: str, tag: str | None = None) -> float | None:
    """The last value of a gauge (with ``tag``, if given); None if never reported."""
    values = [
        r["value"] for r in records if r.get("name") == name and (tag is None or tag in r["tags"])
    ]
    return values[-1] if values else None


def _urls(agent: AgentProcess) -> dict[str, str]:
    return {url.partition("://")[0]: url for url in agent.urls}


@pytest.mark.timeout(120)
def test_live_agent_survives_network_fuzz(tmp_path: Path) -> None:
    rng = random.Random(606)
    expected = Expected()
    with socket_dir() as sockets:
        unix_path = f"{sockets}/agent.sock"
        agent = start_agent(
            tmp_path,
            ["udp://127.0.0.1:0", "tcp://127.0.0.1:0", f"unixstream://{unix_path}"],
            flush_interval="0.1",
        )
        try:
            urls = _urls(agent)
            udp = agent.udp_address()
            host, _, port = urls["tcp"][len("tcp://") :].rpartition(":")
            tcp = Stream("tcp", (host, int(port)), expected)
            unix = Stream("unixstream", unix_path, expected)
            flushes = Flushes(agent.jsonl)
            sent_bad = 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                end = time.monotonic() + NETWORK_SECONDS
                while time.monotonic() < end:
                    for _ in range(100):
                        datagram = _packet(rng)
                        sender.sendto(datagram, udp)
                        expected.packet(datagram)
                    for _ in range(20):
                        tcp.send(_packet(rng) + b"\n")
                        payload = _packet(rng)
                        unix.send(_LENGTH.pack(len(payload)) + payload)
                    if rng.random() < 0.3:  # a line too long: the agent closes the connection
                        tcp.send(b"long:" + b"1" * (DEFAULT_MAX_FRAME + 10) + b"|c\n")
                    if rng.random() < 0.3:  # a length it refuses, then garbage
                        unix.send(_LENGTH.pack(rng.randint(DEFAULT_MAX_FRAME + 1, 2**32 - 1)))
                    if rng.random() < 0.3:
                        unix.send(b"\x00\x00\x00\x00")  # an empty frame: a keep-alive
                    flushes.wait_for_lines(expected.lines, agent)
                sent_bad = sum(expected.errors.values())

                # Known-good lines on every listener, after all that.
                canary = b"\n".join(
                    [b"fuzz.canary.hits:1|c"] * 5
                    + [b"fuzz.canary.level:42|g"]
                    + [b"fuzz.canary.latency:%d|ms" % v for v in (10, 20, 30, 40)]
                )
                sender.sendto(canary, udp)
                expected.packet(canary)
            tcp.send(b"fuzz.canary.tcp:1|c\nfuzz.canary.tcp:2|c\n")
            unix_canary = b"fuzz.canary.unix:3|c"
            unix.send(_LENGTH.pack(len(unix_canary)) + unix_canary)
            tcp.close()
            unix.close()
            flushes.wait_for_lines(expected.lines, agent)
            assert agent.problem() is None
            records = agent.stop()  # the whole file, the final flush included
        finally:
            agent.kill()

    assert sent_bad > 1000, f"only {sent_bad} bad lines: not much of a fuzz"
    # Every line counted once, every bad one by its reason; nothing dropped on the way.
    assert sum(r["value"] for r in records if r.get("name") == "conveyor.agent.lines") == (
        expected.lines
    )
    assert reason_counts(records, "conveyor.agent.parse_errors") == dict(expected.errors)
    assert _last_gauge(records, "conveyor.agent.ring.dropped") in (0, None)
    assert _last_gauge(records, "conveyor.agent.listener.kernel_drops", "listener:udp") in (0, None)
    for kind in ("tcp", "unixstream"):
        closed = _last_gauge(records, "conveyor.agent.listener.framing_errors", f"listener:{kind}")
        assert closed == expected.framing_errors[kind], (kind, closed, expected.framing_errors)

    # Still aggregating correctly.
    def total(name: str) -> float:
        return float(sum(r["value"] for r in records if r.get("name") == name and r.get("kind")))

    assert total("fuzz.canary.hits") == 5
    assert total("fuzz.canary.tcp") == 3
    assert total("fuzz.canary.unix") == 3
    levels = [r["value"] for r in records if r.get("name") == "fuzz.canary.level"]
    assert levels == [42]
    (latency,) = [series_records([r]) for r in records if r.get("name") == "fuzz.canary.latency"]
    stats = latency[("fuzz.canary.latency", "timing")]["stats"]
    assert (stats["count"], stats["min"], stats["max"]) == (4, 10, 40)
    assert (stats["median"], stats["p95"], stats["sum"]) == (25, 40, 100)

    # Rate-limited: thousands of bad lines, a handful of log lines.
    log_lines = [
        line
        for line in agent.log_text().splitlines()
        if not line.startswith(("conveyor agent: listening on", "conveyor agent: stopping"))
    ]
    assert len(log_lines) <= MAX_LOG_LINES, "\n".join(log_lines[:40])
    assert any("bad line" in line for line in log_lines), log_lines


# --- regressions: what the fuzzers found ----------------------------------------------


@pytest.mark.parametrize(
    "payloads",
    [
        # fuzz/agent_fuzz.py, crash-2be5b873: a counter near the largest double, in two
        # parts; math.fsum raised OverflowError and --workers lost the whole flush.
        [b"vies:1e+308|c", b"vies:1e+308|c"],
        [b"t:1e308|ms", b"t:1e308|ms"],  # the same in a timer's sum
        [b"c:1e308|c\nc:1e308|c", b"c:-1e308|c\nc:-1e308|c"],  # inf + -inf: ValueError
    ],
)
def test_merging_sums_beyond_the_largest_double_does_not_raise(payloads: list[bytes]) -> None:
    from conveyor.agent._aggregate import Aggregator

    parts = []
    for payload in payloads:
        aggregator = Aggregator()
        aggregator.ingest(parse_packet(payload))
        parts.append(aggregator.flush(10.0, 1.0))
    merged = parts[0].merge(parts[1:])
    name = payloads[0].split(b":", 1)[0].decode()
    series = merged.find(name)
    assert series is not None
    total = series.value if series.kind == "counter" else series.stat("sum")
    assert total is not None and not math.isfinite(total)  # as one aggregator's sum overflows
    assert merged.find("conveyor.agent.packets", kind="counter") is not None  # the rest is there
