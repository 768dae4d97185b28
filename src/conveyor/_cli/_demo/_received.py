"""What arrived: the agent's JSON-lines file and the error receiver, and the
comparison with the processes' books.

The agent writes one JSON object per series per flush (see
``conveyor.agent.JsonLinesBackend``). Summed over every flush, per (kind, name): a
counter's values, a histogram's or distribution's count of samples, an event's number
per title. Histogram counts are sums of ``1 / sample_rate`` weights (the client sends
at most 64 samples per context and interval, at the rate that keeps the count
exact), so they are rounded to the nearest integer: the only error there is
floating-point. Gauges and sets are not compared (a gauge's last value is not a sum;
the demo records none). The agent's own telemetry (``conveyor.agent.*``) is read
apart: it says whether the agent dropped anything itself.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._books import Key

_SAMPLED = ("histogram", "timing", "distribution")
_TELEMETRY = "conveyor.agent."


@dataclass
class Received:
    """What the agent wrote, summed over its flushes."""

    series: Counter[Key] = field(default_factory=Counter)
    #: the agent's own counters, summed (packets, lines...), and its drop gauges, last
    telemetry: dict[str, float] = field(default_factory=dict)
    flushes: int = 0
    bad_lines: int = 0


def read_jsonl(path: Path) -> Received:
    received = Received()
    totals: dict[Key, float] = {}
    flush_times: set[float] = set()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return received
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            received.bad_lines += 1
            continue
        flush_times.add(float(record.get("timestamp", 0.0)))
        kind = record.get("type") or record.get("kind")
        if kind == "event":
            _add(totals, ("event", str(record.get("title", ""))), 1.0)
            continue
        name = str(record.get("name", ""))
        if name.startswith(_TELEMETRY):
            _add_telemetry(received.telemetry, name[len(_TELEMETRY) :], record)
        elif kind == "counter":
            _add(totals, ("counter", name), float(record["value"]))
        elif kind in _SAMPLED:
            count = float(record.get("stats", {}).get("count", record["value"]))
            _add(totals, (kind, name), count)
    received.series = Counter({key: round(total) for key, total in totals.items()})
    received.flushes = len(flush_times)
    return received


def _add(totals: dict[Key, float], key: Key, amount: float) -> None:
    totals[key] = totals.get(key, 0.0) + amount


def _add_telemetry(telemetry: dict[str, float], name: str, record: Mapping[str, Any]) -> None:
    value = float(record.get("value", 0.0))
    if record.get("kind") == "counter":
        telemetry[name] = telemetry.get(name, 0.0) + value
    else:  # gauges: cumulative already (kernel drops, ring drops): keep the latest
        tags = ",".join(record.get("tags", []))
        telemetry[f"{name}{{{tags}}}" if tags else name] = value


@dataclass(frozen=True)
class Row:
    """One line of the comparison."""

    kind: str
    name: str
    recorded: int
    received: int

    @property
    def ok(self) -> bool:
        return self.recorded == self.received

    @property
    def verdict(self) -> str:
        if self.ok:
            return "ok"
        if self.received < self.recorded:
            return f"LOST {self.recorded - self.received:,}"
        return f"EXTRA {self.received - self.recorded:,}"


def compare(recorded: Mapping[Key, int], received: Mapping[Key, int]) -> list[Row]:
    """Every (kind, name) seen on either side, recorded against received, sorted."""
    keys = sorted(set(recorded) | set(received), key=lambda key: (_ORDER.get(key[0], 9), key))
    return [Row(key[0], key[1], recorded.get(key, 0), received.get(key, 0)) for key in keys]


_ORDER = {"counter": 0, "histogram": 1, "timing": 2, "distribution": 3, "event": 4, "error": 5}


def total_recorded(tallies: Iterable[Mapping[Key, int]]) -> Counter[Key]:
    """The tallies of every process, added up."""
    total: Counter[Key] = Counter()
    for tally in tallies:
        total.update(tally)
    return total


class ErrorReceiver:
    """An HTTP endpoint on the loopback standing in for an error tracker.

    It accepts the dispatchers' batches (a JSON array of ``{"id", "data"}``) and counts
    each error once per exception type, de-duplicating by the idempotency key: the
    dispatcher delivers at least once, so a retried batch may arrive twice.
    """

    def __init__(self) -> None:
        receiver = self
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self.by_type: Counter[str] = Counter()
        self.duplicates = 0
        self.bad_requests = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                accepted = receiver._record(body)
                self.send_response(202 if accepted else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo's terminal is for the demo

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/errors"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-error-receiver", daemon=True
        )
        self._thread.start()

    def _record(self, body: bytes) -> bool:
        try:
            batch = json.loads(body)
            items = [(str(item["id"]), item["data"]["exception"]["type"]) for item in batch]
        except (ValueError, TypeError, KeyError):
            with self._lock:
                self.bad_requests += 1
            return False
        with self._lock:
            for key, error_type in items:
                if key in self._seen:
                    self.duplicates += 1
                    continue
                self._seen.add(key)
                self.by_type[str(error_type)] += 1
        return True

    def received(self) -> Counter[Key]:
        with self._lock:
            return Counter({("error", name): count for name, count in self.by_type.items()})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
