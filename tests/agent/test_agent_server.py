"""The agent end to end: real senders (conveyor's client and the `datadog` package),
real sockets, the outputs read back; and `conveyor agent` as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from datadog.dogstatsd.base import DogStatsd
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Client
from conveyor.agent import AgentServer, JsonLinesBackend, PrometheusBackend, Snapshot

pytestmark = pytest.mark.timeout(60)


def _until(server: AgentServer, done: object, seconds: float = 15.0) -> list[Snapshot]:
    """Flush until ``done(snapshots)`` holds: what a sender wrote may still sit in the
    agent's socket buffer when the sender's own flush returns."""
    snapshots: list[Snapshot] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        snapshot = server.flush(timeout=10)
        assert snapshot is not None
        snapshots.append(snapshot)
        if done(snapshots):  # type: ignore[operator]
            break
    return snapshots


def _counter_total(snapshots: list[Snapshot], name: str, tags: tuple[str, ...] = ()) -> float:
    total = 0.0
    for snapshot in snapshots:
        series = snapshot.find(name, tags, kind="counter")
        if series is not None:
            total += series.value
    return total


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[AgentServer, Path, PrometheusBackend]]:
    jsonl = tmp_path / "flushes.jsonl"
    prometheus = PrometheusBackend("127.0.0.1", 0)
    server = AgentServer(
        ["udp://127.0.0.1:0"], [JsonLinesBackend(jsonl), prometheus], flush_interval=3600
    ).start()
    yield server, jsonl, prometheus
    server.close()


def test_conveyor_and_datadog_senders_add_up(
    agent: tuple[AgentServer, Path, PrometheusBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, jsonl, prometheus = agent
    for name in ("DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_TAGS", "DD_ENTITY_ID"):
        monkeypatch.delenv(name, raising=False)
    url = server.listeners[0].url
    port = int(url.rsplit(":", 1)[1])
    ours = Client(url=url)
    theirs = DogStatsd(
        host="127.0.0.1", port=port, disable_telemetry=True, origin_detection_enabled=False
    )
    for i in range(5000):
        ours.increment("orders.placed", tags=["country:de"])
        ours.histogram("latency", i % 100)
        if i < 500:
            theirs.increment("orders.placed", tags=["country:de"])
    ours.gauge("queue.depth", 42)
    assert ours.flush(timeout=10)
    snapshots = _until(
        server, lambda s: _counter_total(s, "orders.placed", ("country:de",)) >= 5500
    )
    assert _counter_total(snapshots, "orders.placed", ("country:de",)) == 5500
    histograms = [s.find("latency", kind="histogram") for s in snapshots]
    assert sum(h.stat("count") or 0 for h in histograms if h is not None) == pytest.approx(5000)
    assert any(
        (g := s.find("queue.depth", kind="gauge")) is not None and g.value == 42 for s in snapshots
    )

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sum(r["value"] for r in records if r["name"] == "orders.placed") == 5500

    with urllib.request.urlopen(prometheus.url, timeout=10) as response:
        text = response.read().decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    (sample,) = [s for s in families["orders_placed"].samples if s.name == "orders_placed_total"]
    assert sample.value == 5500 and sample.labels == {"country": "de"}
    ours.close()


def test_bad_lines_are_counted_and_the_rest_of_the_packet_still_counts(
    agent: tuple[AgentServer, Path, PrometheusBackend],
) -> None:
    server = agent[0]
    address = server.listeners[0].address
    assert isinstance(address, tuple)
    host, port = address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"good:1|c\nbad:x|c\n\xff\xfe:1|c\nunknown:1|zz\ngood:2|c", (host, port))
    snapshots = _until(server, lambda s: _counter_total(s, "good") >= 3)
    assert _counter_total(snapshots, "good") == 3
    stats = server.statistics().aggregator
    assert sum(stats.parse_errors.values()) == 3


def test_the_command_line_agent_flushes_at_sigterm(tmp_path: Path) -> None:
    from agent_process_support import start_agent

    agent = start_agent(tmp_path, ["udp://127.0.0.1:0"])
    try:
        assert agent.urls[0].startswith("udp://127.0.0.1:"), agent.urls
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(100):
                sender.sendto(b"cli.hits:1|c", agent.udp_address())
        # The datagrams are in the agent's socket buffer now; SIGTERM must not lose them.
        records = agent.stop()
    finally:
        agent.kill()
    assert sum(r["value"] for r in records if r["name"] == "cli.hits") == 100


def test_the_agent_refuses_a_bad_listen_url() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "agent", "--listen", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "ftp://x" in result.stderr and "Traceback" not in result.stderr


def test_close_reads_what_the_kernel_already_holds() -> None:
    import select
    import threading

    from conveyor.agent import listen

    received: list[bytes] = []
    piled_up = threading.Event()
    closing = threading.Event()
    closer: list[threading.Thread] = []

    def sink(packet: bytes) -> None:
        received.append(packet)
        if len(received) == 1:
            # Hold the reader until the datagrams are in the kernel and close() has
            # signalled the reader to stop (its stop socket is readable).
            assert piled_up.wait(10)
            closer.append(threading.Thread(target=listener.close))
            closer[0].start()
            closing.set()
            stop = listener._stop_r  # type: ignore[attr-defined]
            assert select.select([stop], [], [], 10)[0]

    listener = listen("udp://127.0.0.1:0", sink)
    listener.start()
    address = listener.address
    assert isinstance(address, tuple)
    host, port = address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(2000):  # more than one wake's worth of reads
            sender.sendto(b"x:%d|c" % i, (host, port))
    piled_up.set()
    assert closing.wait(10)
    closer[0].join(10)
    assert not closer[0].is_alive()
    assert len(received) == 2000


@pytest.mark.parametrize("how", ["flag", "config"])
def test_the_command_line_agent_reports_the_percentiles_it_is_given(
    tmp_path: Path, how: str
) -> None:
    from agent_process_support import series_records, start_agent

    if how == "flag":
        options: tuple[str, ...] = ("--percentiles", "90,50")
    else:
        if sys.version_info < (3, 11):
            pytest.skip("--config needs tomllib (3.11+)")
        config = tmp_path / "agent.toml"
        config.write_text("percentiles = [50, 90]\n")
        options = ("--config", str(config))
    agent = start_agent(tmp_path, ["udp://127.0.0.1:0"], *options)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            values = ":".join(str(v) for v in range(1, 11))
            sender.sendto(f"cli.latency:{values}|ms".encode(), agent.udp_address())
        records = agent.stop()
    finally:
        agent.kill()
    stats = series_records(records)[("cli.latency", "timing")]["stats"]
    assert (stats["count"], stats["median"], stats["p90"]) == (10, 5.5, 9)
    assert "p95" not in stats and "p99" not in stats


def test_the_agent_refuses_percentiles_out_of_range() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "agent", "--percentiles", "50,100"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2  # argparse's usage error, not a traceback
    assert "between 0 and 100" in result.stderr and "Traceback" not in result.stderr
