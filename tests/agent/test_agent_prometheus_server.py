"""A real Prometheus server scrapes the agent's PrometheusBackend.

``tools/ensure-peer prometheus`` finds (or, as root, installs Debian's) ``prometheus``; the
test runs its own instance on a free loopback port with its own data directory, points
it at the agent's ``/metrics`` with a 1 s scrape interval, sends DogStatsD over UDP,
flushes the agent and asks Prometheus' HTTP API until the scraped values show up.
Without a Prometheus the test is skipped, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ci_support import missing
from conveyor.agent import AgentServer, PrometheusBackend, Snapshot

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "tools" / "ensure-peer"
JOB = "conveyor-agent"
ORDERS = 25

T = TypeVar("T")

# Loopback only, and never through a proxy the environment may name.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class PrometheusServer:
    process: subprocess.Popen[bytes]
    api: str  # http://127.0.0.1:<port>
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, **params: str) -> Any:
        """One real request to the HTTP API; the decoded JSON ``data``."""
        url = self.api + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with _OPENER.open(url, timeout=5) as response:
            body = json.loads(response.read().decode())
        assert body["status"] == "success", body
        return body["data"]


def _prometheus_binary() -> str:
    """The binary ``tools/ensure-peer prometheus`` prints; skip (or, under CI, fail) without."""
    try:
        result = subprocess.run(
            [str(ENSURE), "prometheus"], capture_output=True, text=True, timeout=100, check=False
        )
        problem = (
            ""
            if result.returncode == 0
            else result.stderr.strip()[-2000:] or f"{ENSURE} exited with {result.returncode}"
        )
        binary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem, binary = f"{ENSURE} could not run: {exc}", ""
    if not problem and not os.access(binary, os.X_OK):
        problem = f"{ENSURE} printed {binary!r}, which is not an executable"
    if problem:
        missing("a prometheus server", problem)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _poll(
    what: str, attempt: Callable[[], T | None], server: PrometheusServer, seconds: float = 60.0
) -> T:
    """Call ``attempt`` (a real request) until it returns a value or the deadline passes;
    fails with Prometheus' log if it never does or if the process dies."""
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"prometheus exited with {server.process.returncode} while waiting for"
                f" {what}:\n{server.log_tail()}"
            )
        try:
            value = attempt()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            value, last = None, exc
        if value is not None:
            return value
        time.sleep(0.2)  # between real requests, bounded by the deadline
    pytest.fail(
        f"timed out after {seconds}s waiting for {what} (last: {last!r}):\n{server.log_tail()}"
    )


@pytest.fixture
def backend() -> Iterator[PrometheusBackend]:
    prometheus = PrometheusBackend("127.0.0.1", 0)
    yield prometheus
    prometheus.close()


@pytest.fixture
def prometheus_server(backend: PrometheusBackend, tmp_path: Path) -> Iterator[PrometheusServer]:
    binary = _prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: {JOB}\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{backend.port}']\n"
    )
    data = tmp_path / "tsdb"
    data.mkdir()
    port = _free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server = PrometheusServer(process, f"http://127.0.0.1:{port}", log)
    try:

        def ready() -> bool | None:
            with _OPENER.open(server.api + "/-/ready", timeout=5) as response:
                return True if response.status == 200 else None

        _poll("prometheus to be ready", ready, server, seconds=30)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def agent(backend: PrometheusBackend) -> Iterator[AgentServer]:
    server = AgentServer(["udp://127.0.0.1:0"], [backend], flush_interval=3600).start()
    yield server
    server.close()


@pytest.mark.timeout(120)
def test_a_real_prometheus_scrapes_the_agent(
    prometheus_server: PrometheusServer, agent: AgentServer, backend: PrometheusBackend
) -> None:
    address = agent.listeners[0].address
    assert isinstance(address, tuple)
    host, port = address[0], address[1]
    assert host == "127.0.0.1"
    # One datagram per increment; the last one carries the gauge too, so the flush that
    # sees the gauge has seen every increment (one socket, in order) and its snapshot,
    # the one the backend exposes, holds both series.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(ORDERS - 1):
            sender.sendto(b"orders.placed:1|c|#country:de", (host, port))
        sender.sendto(b"orders.placed:1|c|#country:de\nqueue.depth:42|g|#queue:mail", (host, port))

    snapshots: list[Snapshot] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        snapshot = agent.flush(timeout=10)
        assert snapshot is not None
        snapshots.append(snapshot)
        if snapshot.find("queue.depth", ("queue:mail",), kind="gauge") is not None:
            break
    else:
        pytest.fail(f"the agent never saw the gauge in {len(snapshots)} flushes")
    counted = sum(
        s.value
        for snapshot in snapshots
        if (s := snapshot.find("orders.placed", ("country:de",), kind="counter")) is not None
    )
    assert counted == ORDERS

    instance = f"127.0.0.1:{backend.port}"

    def query(expression: str, want: str) -> list[dict[str, Any]] | None:
        data = prometheus_server.get("/api/v1/query", query=expression)
        assert data["resultType"] == "vector"
        result: list[dict[str, Any]] = data["result"]
        return result if result and result[0]["value"][1] == want else None

    (orders,) = _poll(
        "orders_placed_total in Prometheus",
        lambda: query("orders_placed_total", str(ORDERS)),
        prometheus_server,
    )
    assert orders["metric"] == {
        "__name__": "orders_placed_total",
        "country": "de",
        "instance": instance,
        "job": JOB,
    }
    assert float(orders["value"][1]) == ORDERS

    (depth,) = _poll(
        "queue_depth in Prometheus", lambda: query("queue_depth", "42"), prometheus_server
    )
    assert depth["metric"] == {
        "__name__": "queue_depth",
        "queue": "mail",
        "instance": instance,
        "job": JOB,
    }

    def target_up() -> dict[str, Any] | None:
        targets = prometheus_server.get("/api/v1/targets", state="active")["activeTargets"]
        ours = [t for t in targets if t["labels"].get("instance") == instance]
        return ours[0] if ours and ours[0]["health"] == "up" else None

    target = _poll("the agent's target to be up", target_up, prometheus_server)
    assert target["labels"]["job"] == JOB
    assert target["scrapeUrl"] == backend.url
    assert target["lastError"] == ""
    up = query(f'up{{job="{JOB}"}}', "1")
    assert up is not None and len(up) == 1
