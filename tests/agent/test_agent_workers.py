"""``--workers N``: worker processes sharing the UDP port (SO_REUSEPORT), merged by the
parent at each flush; and `conveyor agent --workers 2` as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.agent import AgentWorkers, JsonLinesBackend, Snapshot

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"), reason="SO_REUSEPORT is not available"
)

SENDERS = 16  # sender sockets, so distinct source ports that the kernel hashes


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _counter(snapshot: Snapshot, name: str) -> float:
    series = snapshot.find(name, kind="counter")
    return series.value if series is not None else 0.0


def _flush_until(
    server: AgentWorkers, done: Callable[[float], bool], name: str, seconds: float = 20.0
) -> float:
    """Flush until ``done(total of name over the flushes)``, or the deadline: what was
    sent may still sit in a worker's socket buffer."""
    total = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        snapshot = server.flush(timeout=10)
        assert snapshot is not None
        total += _counter(snapshot, name)
        if done(total):
            break
    return total


def _send(port: int, count: int, payload: bytes = b"spread.hits:1|c") -> None:
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SENDERS)]
    try:
        for i in range(count):
            senders[i % SENDERS].sendto(payload, ("127.0.0.1", port))
    finally:
        for sender in senders:
            sender.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[AgentWorkers, Path]]:
    jsonl = tmp_path / "flushes.jsonl"
    server = AgentWorkers(
        ["udp://127.0.0.1:0"], [JsonLinesBackend(jsonl)], workers=2, flush_interval=3600
    ).start()
    yield server, jsonl
    server.close()


@pytest.mark.timeout(90)
def test_two_workers_share_the_port_and_their_counts_merge_exactly(
    workers: tuple[AgentWorkers, Path],
) -> None:
    server, jsonl = workers
    (url,) = server.urls
    assert url.startswith("udp://127.0.0.1:") and _port(url) != 0
    sent = 4000
    _send(_port(url), sent)
    total = _flush_until(server, lambda total: total >= sent, "spread.hits")
    assert total == sent

    stats = server.statistics()
    assert [w.index for w in stats.workers] == [0, 1]
    assert all(w.alive and w.pid is not None for w in stats.workers)
    assert len({w.pid for w in stats.workers}) == 2
    # Sixteen source ports over two sockets: each worker got some of them.
    assert all(w.packets > 0 for w in stats.workers), stats.workers
    assert sum(w.packets for w in stats.workers) == sent
    assert stats.workers_lost == 0

    # Every flush went to the backend, merged.
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sum(r["value"] for r in records if r["name"] == "spread.hits") == sent


@pytest.mark.timeout(90)
def test_telemetry_stays_per_worker_and_gauges_sets_merge(
    workers: tuple[AgentWorkers, Path],
) -> None:
    server, _ = workers
    port = _port(server.urls[0])
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SENDERS)]
    try:
        for i, sender in enumerate(senders):
            sender.sendto(b"users:u%d|s\nmarker:1|c" % (i % 4), ("127.0.0.1", port))
    finally:
        for sender in senders:
            sender.close()
    merged: list[Snapshot] = []
    deadline = time.monotonic() + 20
    total = 0.0
    while total < SENDERS and time.monotonic() < deadline:
        snapshot = server.flush(timeout=10)
        assert snapshot is not None
        merged.append(snapshot)
        total += _counter(snapshot, "marker")
    assert total == SENDERS
    members: set[str] = set()
    for snapshot in merged:
        series = snapshot.find("users", kind="set")
        if series is not None:
            members |= series.members
    assert members == {"u0", "u1", "u2", "u3"}
    last = merged[-1]
    for index in (0, 1):
        assert last.find("conveyor.agent.contexts", [f"worker:{index}"], kind="gauge")
        assert last.find(
            "conveyor.agent.listener.packets", ["listener:udp", f"worker:{index}"], kind="gauge"
        )
    alive = last.find("conveyor.agent.workers", kind="gauge")
    assert alive is not None and alive.value == 2


@pytest.mark.timeout(90)
def test_a_dead_worker_is_counted_and_does_not_hang_the_flush(
    workers: tuple[AgentWorkers, Path],
) -> None:
    server, _ = workers
    victim = server.statistics().workers[1]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    started = time.monotonic()
    snapshot = server.flush(timeout=10)
    assert snapshot is not None
    assert time.monotonic() - started < 10
    stats = server.statistics()
    assert stats.workers_lost == 1
    assert [w.alive for w in stats.workers] == [True, False]
    lost = snapshot.find("conveyor.agent.workers.lost", kind="gauge")
    assert lost is not None and lost.value == 1
    # The survivor keeps working: the kernel now sends every datagram to it.
    _send(_port(server.urls[0]), 200)
    total = _flush_until(server, lambda total: total >= 200, "spread.hits")
    assert total == 200, server.statistics()


class _Collect:
    """A backend that signals once the counter ``name`` has added up to ``until``."""

    def __init__(self, name: str, until: float) -> None:
        self.name, self.until = name, until
        self.total = 0.0
        self.emits = 0
        self.reached = threading.Event()
        self.closed = False

    def emit(self, snapshot: Snapshot) -> None:
        self.emits += 1
        self.total += _counter(snapshot, self.name)
        if self.total >= self.until:
            self.reached.set()

    def close(self) -> None:
        self.closed = True


@pytest.mark.timeout(60)
def test_the_parent_flushes_on_its_timer() -> None:
    backend = _Collect("timed.hits", 300)
    server = AgentWorkers(["udp://127.0.0.1:0"], [backend], workers=2, flush_interval=0.2).start()
    try:
        _send(_port(server.urls[0]), 300, b"timed.hits:1|c")
        assert backend.reached.wait(30)  # no explicit flush(): the timer merged them
    finally:
        server.close()
    assert backend.total == 300 and backend.closed
    assert all(not w.alive or w.answered > 0 for w in server.statistics().workers)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "url", ["tcp://127.0.0.1:0", "unixstream:///tmp/x.sock", "unixgram:///tmp/x.sock"]
)
def test_only_udp_listeners_can_be_shared(url: str) -> None:
    with pytest.raises(ValueError, match="udp://"):
        AgentWorkers(["udp://127.0.0.1:0", url], workers=2)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("count", [0, -1, 1.5, True])
def test_the_worker_count_is_checked(count: object) -> None:
    with pytest.raises(ValueError, match="workers"):
        AgentWorkers(["udp://127.0.0.1:0"], workers=count)  # type: ignore[arg-type]


@pytest.mark.timeout(90)
def test_the_command_line_agent_with_two_workers_flushes_at_sigterm(tmp_path: Path) -> None:
    from agent_process_support import start_agent

    agent = start_agent(tmp_path, ["udp://127.0.0.1:0"], "--workers", "2")
    try:
        assert agent.urls[0].startswith("udp://127.0.0.1:"), agent.urls
        _send(agent.udp_address()[1], 400, b"cli.hits:1|c")
        # The datagrams are in the workers' socket buffers: SIGTERM must not lose them.
        records = agent.stop(timeout=60)
    finally:
        agent.kill()
    assert sum(r["value"] for r in records if r["name"] == "cli.hits") == 400
    workers = {tag for r in records for tag in r.get("tags", ()) if tag.startswith("worker:")}
    assert workers == {"worker:0", "worker:1"}


@pytest.mark.timeout(30)
def test_the_command_line_refuses_shared_stream_listeners() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor", "agent", "--workers", "2", "--listen", "tcp://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "udp://" in result.stderr and "Traceback" not in result.stderr
