"""The agent's backends against real destinations: a stream, a file, HTTP, a UDP socket."""

from __future__ import annotations

import gzip
import http.server
import io
import json
import math
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.agent._aggregate import Aggregator
from conveyor.agent._backends import (
    Backend,
    HttpJsonForwarder,
    JsonLinesBackend,
    PrometheusBackend,
    StatsdForwarder,
    StdoutBackend,
    prometheus_labels,
    prometheus_name,
)
from conveyor.agent._series import Kind, Series, Snapshot
from conveyor.protocol import parse_packet

TRAFFIC = (
    b"web.requests:1|c|#env:prod,canary\n"
    b"web.requests:2|c|@0.5|#canary,env:prod\n"
    b"queue.depth:12|g|#queue:mail\n"
    b"users:alice|s\nusers:bob|s\nusers:alice|s\n"
    b"api.latency:10:20:30:40|ms|#route:/x\n"
    b"payload.size:100:200:300|d\n"
    b"_e{5,4}:Title|Text|t:warning|#env:prod\n"
    b"_sc|db|2|m:down"
)


def snapshot(traffic: bytes = TRAFFIC, now: float = 1_700_000_000.0) -> Snapshot:
    agg = Aggregator(clock=lambda: now)
    agg.ingest(parse_packet(traffic))
    return agg.flush(10.0, now)


def test_agent_backends_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(StdoutBackend(io.StringIO()), Backend)
    assert isinstance(JsonLinesBackend(tmp_path / "x.jsonl"), Backend)


@pytest.mark.timeout(10)
def test_agent_stdout_backend_writes_aligned_readable_block() -> None:
    stream = io.StringIO()
    backend = StdoutBackend(stream)
    backend.emit(snapshot())
    backend.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("--- 2023-11-14T22:13:20Z interval 10s:")
    body = {line.split()[1]: line for line in lines[1:] if not line.startswith(("event", "check"))}
    assert "count=5 rate=0.5/s" in body["web.requests"]
    assert "canary,env:prod" in body["web.requests"]
    assert body["queue.depth"].endswith("value=12")
    assert body["users"].endswith("distinct=2")
    assert "count=4 sum=100 min=10 max=40 avg=25 median=25" in body["api.latency"]
    assert body["payload.size"].split()[0] == "dist"
    # Aligned: the name column starts at the same offset on every series line.
    series_lines = [line for line in lines[1:] if not line.startswith(("event ", "check "))]
    offsets = {line.index(line.split()[1]) for line in series_lines}
    assert len(offsets) == 1
    assert any(line.startswith("event  'Title': 'Text' [warning]") for line in lines)
    assert any(line.startswith("check  db status=2  'down'") for line in lines)
    assert backend.statistics().emits == 1


@pytest.mark.timeout(10)
def test_agent_jsonl_backend_one_object_per_series(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    backend = JsonLinesBackend(path)
    snap = snapshot()
    backend.emit(snap)
    path.rename(tmp_path / "rotated.jsonl")  # rotation: the next flush starts a new file
    backend.emit(snapshot(b"a:1|c", now=1_700_000_010.0))
    backend.close()
    records = [json.loads(line) for line in (tmp_path / "rotated.jsonl").read_text().splitlines()]
    series = [r for r in records if "kind" in r]
    assert len(series) == len(snap.series)
    by_name = {(r["name"], r["kind"]): r for r in series}
    requests = by_name[("web.requests", "counter")]
    assert requests == {
        "timestamp": 1_700_000_000.0,
        "interval": 10.0,
        "name": "web.requests",
        "kind": "counter",
        "tags": ["canary", "env:prod"],
        "value": 5.0,
        "rate": 0.5,
    }
    # etsy statsd's upper_95 of 10, 20, 30, 40: the value at rank round(0.95 * 4) = 4.
    assert by_name[("api.latency", "timing")]["stats"]["p95"] == 40
    assert by_name[("users", "set")]["value"] == 2
    assert [r["type"] for r in records if "type" in r] == ["event", "service_check"]
    assert {r["name"] for r in map(json.loads, path.read_text().splitlines())} >= {"a"}


@pytest.fixture
def prometheus() -> Iterator[PrometheusBackend]:
    backend = PrometheusBackend(port=0)
    try:
        yield backend
    finally:
        backend.close()


def scrape(backend: PrometheusBackend) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    with urllib.request.urlopen(backend.url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    families: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families[f"{family.name}:{family.type}"] = [
            (sample.name, sample.labels, sample.value) for sample in family.samples
        ]
    return families


@pytest.mark.timeout(20)
def test_agent_prometheus_backend_serves_scrapeable_metrics(
    prometheus: PrometheusBackend,
) -> None:
    assert prometheus.url.startswith("http://127.0.0.1:")
    assert scrape(prometheus) == {}  # nothing flushed yet: an empty, valid exposition
    prometheus.emit(snapshot())
    first = scrape(prometheus)
    assert first["web_requests:counter"] == [
        ("web_requests_total", {"env": "prod", "tag": "canary"}, 5.0)
    ]
    assert first["queue_depth:gauge"] == [("queue_depth", {"queue": "mail"}, 12.0)]
    assert first["users:gauge"] == [("users", {}, 2.0)]
    latency = {
        (name, labels.get("quantile")): value
        for name, labels, value in first["api_latency:summary"]
    }
    assert latency[("api_latency", "0.0")] == 10
    assert latency[("api_latency", "0.5")] == 25
    assert latency[("api_latency", "1.0")] == 40
    assert latency[("api_latency_count", None)] == 4
    assert latency[("api_latency_sum", None)] == 100
    size = {(n, lab.get("quantile")): v for n, lab, v in first["payload_size:summary"]}
    assert size[("payload_size", "0.5")] == pytest.approx(200, rel=1 / 128)
    assert "conveyor_agent_packets:counter" in first
    # Counters and summary counts accumulate across flushes; gauges show the last value
    # received; a series the latest flush did not have is still there (no gaps).
    prometheus.emit(snapshot(b"web.requests:1|c|#env:prod,canary\napi.latency:1|ms|#route:/x"))
    second = scrape(prometheus)
    assert second["web_requests:counter"][0][2] == 6.0
    assert second["queue_depth:gauge"] == [("queue_depth", {"queue": "mail"}, 12.0)]
    latency2 = {(n, lab.get("quantile")): v for n, lab, v in second["api_latency:summary"]}
    assert latency2[("api_latency_count", None)] == 5
    assert latency2[("api_latency", "1.0")] == 1
    prometheus.emit(snapshot(b"queue.depth:3|g|#queue:mail"))
    third = scrape(prometheus)
    assert third["web_requests:counter"][0][2] == 6.0
    assert third["queue_depth:gauge"] == [("queue_depth", {"queue": "mail"}, 3.0)]
    assert ("api_latency_count", {"route": "/x"}, 5.0) in third["api_latency:summary"]


@pytest.mark.timeout(20)
def test_agent_prometheus_backend_forgets_the_least_recently_updated_series_past_its_bound() -> (
    None
):
    backend = PrometheusBackend(port=0, max_series=3)
    try:
        counter: Kind = "counter"
        gauge: Kind = "gauge"
        backend.emit(
            Snapshot(
                1.0,
                1.0,
                (
                    Series("a", counter, (), 1),
                    Series("b", counter, (), 1),
                    Series("c", gauge, (), 1),
                ),
            )
        )
        backend.emit(Snapshot(2.0, 1.0, (Series("a", counter, (), 1), Series("d", gauge, (), 7))))
        families = scrape(backend)
        assert families == {
            "c:gauge": [("c", {}, 1.0)],
            "a:counter": [("a_total", {}, 2.0)],
            "d:gauge": [("d", {}, 7.0)],
        }
    finally:
        backend.close()
    with pytest.raises(ValueError, match="max_series"):
        PrometheusBackend(port=0, max_series=0)


@pytest.mark.timeout(20)
def test_agent_prometheus_backend_resolves_name_conflicts(prometheus: PrometheusBackend) -> None:
    prometheus.emit(snapshot(b"x.y:1|g\nx-y:2|ms\nx_y:3|g|#a:1\nx.y:4|g|#a:1"))
    families = {k: v for k, v in scrape(prometheus).items() if not k.startswith("conveyor_")}
    assert list(families) == ["x_y:gauge"]
    assert sorted(v for _, _, v in families["x_y:gauge"]) == [1.0, 3.0]
    assert prometheus.statistics().errors == {"conflict": 2}


def test_agent_prometheus_names_and_labels() -> None:
    assert prometheus_name("api.request-time") == "api_request_time"
    assert prometheus_name("2xx.count") == "_2xx_count"
    assert prometheus_labels(
        ["env:prod", "canary", "blue", "quantile:x", "1a:b", "k:1", "k:2"]
    ) == {
        "env": "prod",
        "tag": "blue,canary",
        "exported_quantile": "x",
        "exported_1a": "b",
        "k": "1,2",
    }
    assert prometheus_labels(["a.b-c:v:w"]) == {"a_b_c": "v:w"}


@pytest.fixture
def udp_server() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def receive_all(sock: socket.socket) -> bytes:
    """Every datagram sent so far (they were sent before this is called)."""
    data = b""
    sock.settimeout(5)
    data += sock.recv(65536)
    sock.setblocking(False)
    try:
        while True:
            data += sock.recv(65536)
    except BlockingIOError:
        pass
    return data


@pytest.mark.timeout(20)
def test_agent_statsd_forwarder_sends_aggregates_over_udp(udp_server: socket.socket) -> None:
    port = udp_server.getsockname()[1]
    forwarder = StatsdForwarder(f"udp://127.0.0.1:{port}")
    snap = snapshot()
    forwarder.emit(snap)
    forwarder.close()
    result = parse_packet(receive_all(udp_server))
    assert result.errors == {}
    got = {(m.name, m.type, tuple(sorted(m.tags))): m for m in result.metrics}
    assert got[("web.requests", "c", ("canary", "env:prod"))].values == (5.0,)
    assert got[("queue.depth", "g", ("queue:mail",))].values == (12.0,)
    assert got[("users", "g", ())].values == (2.0,)
    for stat, value in {"count": 4, "min": 10, "max": 40, "avg": 25, "median": 25}.items():
        assert got[(f"api.latency.{stat}", "g", ("route:/x",))].values == (value,)
    assert ("api.latency.p95", "g", ("route:/x",)) in got
    # The distribution comes back as values whose sample rate keeps its count.
    dist = [m for m in result.metrics if m.name == "payload.size"]
    assert {m.type for m in dist} == {"d"}
    assert sum(len(m.values) / m.sample_rate for m in dist) == pytest.approx(3)
    assert sorted(v for m in dist for v in m.values) == pytest.approx([100, 200, 300], rel=0.01)
    assert [e.title for e in result.events] == ["Title"]
    assert [c.name for c in result.service_checks] == ["db"]
    # Re-aggregating what was forwarded gives the same counts.
    upstream = Aggregator()
    upstream.ingest(result)
    again = upstream.flush(10, 1)
    assert again.find("web.requests", ["canary", "env:prod"]).value == 5  # type: ignore[union-attr]
    assert again.find("payload.size").value == pytest.approx(3)  # type: ignore[union-attr]
    assert forwarder.statistics().errors == {}


@pytest.mark.timeout(20)
def test_agent_statsd_forwarder_large_distribution_keeps_count(udp_server: socket.socket) -> None:
    port = udp_server.getsockname()[1]
    forwarder = StatsdForwarder(f"udp://127.0.0.1:{port}", distribution_values=64)
    values = b":".join(str(v).encode() for v in range(1, 1001))
    forwarder.emit(snapshot(b"big:" + values + b"|d|#" + b",".join([b"t:" + b"x" * 40] * 10)))
    forwarder.close()
    result = parse_packet(receive_all(udp_server))
    dist = [m for m in result.metrics if m.name == "big"]
    assert sum(len(m.values) for m in dist) == 64
    assert sum(len(m.values) / m.sample_rate for m in dist) == pytest.approx(1000, rel=1e-3)
    assert max(v for m in dist for v in m.values) <= 1000 * (1 + 1 / 128)


@pytest.mark.timeout(20)
def test_agent_statsd_forwarder_plain_statsd_negative_gauge(udp_server: socket.socket) -> None:
    port = udp_server.getsockname()[1]
    forwarder = StatsdForwarder(f"udp://127.0.0.1:{port}", statsd_dialect=True)
    forwarder.emit(snapshot(b"temp:-5|g"))
    forwarder.close()
    data = receive_all(udp_server)
    assert b"temp:0|g\ntemp:-5|g\n" in data
    # A plain StatsD server applying deltas ends at -5.
    upstream = Aggregator(statsd_dialect=True)
    upstream.ingest(parse_packet(data, statsd_dialect=True))
    assert upstream.flush(10, 1).find("temp").value == -5  # type: ignore[union-attr]


@pytest.mark.timeout(20)
def test_agent_statsd_forwarder_skips_only_the_statistic_it_cannot_encode(
    udp_server: socket.socket,
) -> None:
    port = udp_server.getsockname()[1]
    forwarder = StatsdForwarder(f"udp://127.0.0.1:{port}")
    stats = (("count", 3.0), ("sum", math.inf), ("max", 2.0))
    forwarder.emit(Snapshot(2.0, 1.0, (Series("lat", "histogram", (), 3.0, stats=stats),)))
    forwarder.close()
    data = receive_all(udp_server)
    assert b"lat.count:3|g" in data and b"lat.max:2|g" in data
    assert b"lat.sum" not in data
    assert forwarder.statistics().errors == {"unencodable": 1}


@pytest.mark.timeout(20)
def test_agent_statsd_forwarder_counts_send_failures() -> None:
    # A Unix datagram socket that does not exist: every send fails, nothing raises.
    forwarder = StatsdForwarder("unix:///nonexistent/conveyor-agent-test.sock")
    forwarder.emit(snapshot())
    forwarder.close()
    errors = forwarder.statistics().errors
    assert errors
    assert sum(errors.values()) >= 1


class _Collecting(http.server.BaseHTTPRequestHandler):
    bodies: list[list[dict[str, Any]]]
    statuses: list[int]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            self.bodies.append(json.loads(body))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.timeout(30)
def test_agent_http_json_forwarder_delivers_with_retries() -> None:
    class Handler(_Collecting):
        bodies: list[list[dict[str, Any]]] = []  # noqa: RUF012 - one test's server
        statuses: list[int] = [503]  # noqa: RUF012

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        forwarder = HttpJsonForwarder(f"http://127.0.0.1:{server.server_address[1]}/v1/series")
        snap = snapshot()
        forwarder.emit(snap)
        assert forwarder.dispatcher.flush(timeout=20)
        forwarder.close()
    finally:
        server.shutdown()
        server.server_close()
    items = [entry["data"] for body in Handler.bodies for entry in body]
    series = [item for item in items if "kind" in item]
    assert len(series) == len(snap.series)
    requests = next(item for item in series if item["name"] == "web.requests")
    assert requests["value"] == 5.0
    assert requests["tags"] == ["canary", "env:prod"]
    assert {item.get("type") for item in items} >= {"event", "service_check"}
    stats = forwarder.dispatcher.statistics()
    assert stats.delivered == len(items)
