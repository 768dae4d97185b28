"""``conveyor agent`` as a real process, for the tests that talk to it only through
sockets and read what it wrote (tests/agent/test_agent_peer_parity.py,
tests/agent/test_agent_fuzz.py).

By default the agent runs with one long flush interval, so that its only flush is the
final one at SIGTERM: everything a test sent ends up in one snapshot, which is what a
peer server's single flush is compared against (a test that needs to watch it work
passes a short ``flush_interval`` and reads the file as it grows). Its stderr goes to
a file (a pipe nobody reads could fill up and block its log calls); readiness is the
"listening on" line, polled with a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

LISTENING = "conveyor agent: listening on "
ONE_FLUSH_INTERVAL = "3600"  # seconds: no periodic flush during a test, only the final one


def poll(
    what: str,
    attempt: Callable[[], T | None],
    alive: Callable[[], str | None],
    seconds: float = 30.0,
) -> T:
    """Call ``attempt`` until it returns a value; fail when ``seconds`` pass or when
    ``alive()`` reports a problem (a process that exited, with its log)."""
    deadline = time.monotonic() + seconds
    pause = 0.001
    while True:
        value = attempt()
        if value is not None:
            return value
        problem = alive()
        if problem is not None:
            pytest.fail(f"while waiting for {what}: {problem}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        time.sleep(pause)  # between polls of a real condition, bounded by the deadline
        pause = min(pause * 2, 0.05)


@dataclass
class AgentProcess:
    """A running ``conveyor agent``: its process, bound URLs, JSON-lines output and log."""

    process: subprocess.Popen[bytes]
    jsonl: Path
    log: Path
    urls: tuple[str, ...] = ()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def problem(self) -> str | None:
        """None while the process runs; else how it ended, with its log's tail."""
        code = self.process.poll()
        if code is None:
            return None
        tail = "\n".join(self.log_text().splitlines()[-40:])
        return f"conveyor agent exited with {code}:\n{tail}"

    def udp_address(self) -> tuple[str, int]:
        """The (host, port) of its first ``udp://`` listener."""
        for url in self.urls:
            if url.startswith("udp://"):
                host, _, port = url[len("udp://") :].rpartition(":")
                return host.strip("[]"), int(port)
        raise AssertionError(f"no udp:// listener among {self.urls}")

    def stop(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        """SIGTERM, a clean exit, and the records of its flushes (the final one included)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"conveyor agent did not stop within {timeout}s:\n{self.log_text()}")
        assert code == 0, f"conveyor agent exited with {code}:\n{self.log_text()}"
        assert self.jsonl.exists(), f"conveyor agent wrote no flush:\n{self.log_text()}"
        return [json.loads(line) for line in self.jsonl.read_text().splitlines()]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def start_agent(
    directory: Path,
    listen: Sequence[str],
    *options: str,
    flush_interval: str = ONE_FLUSH_INTERVAL,
) -> AgentProcess:
    """``conveyor agent --listen ... --jsonl ... --prometheus off`` plus ``options``,
    started and ready (its listeners bound)."""
    jsonl = directory / "conveyor.jsonl"
    log = directory / "conveyor.log"
    command = [sys.executable, "-m", "conveyor", "agent"]
    for url in listen:
        command += ["--listen", url]
    command += ["--jsonl", str(jsonl), "--prometheus", "off"]
    command += ["--flush-interval", flush_interval, *options]
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file)
    agent = AgentProcess(process, jsonl, log)

    def listening() -> tuple[str, ...] | None:
        for line in agent.log_text().splitlines():
            if line.startswith(LISTENING):
                return tuple(line[len(LISTENING) :].strip().split(", "))
        return None

    try:
        agent.urls = poll("conveyor agent to listen", listening, agent.problem)
    except BaseException:
        agent.kill()
        raise
    return agent


def series_records(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The untagged series of the records, by (name, kind); a duplicate is an error."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if "kind" not in record or record["tags"]:
            continue
        key = (record["name"], record["kind"])
        assert key not in found, f"two records for {key}: {found[key]} and {record}"
        found[key] = record
    return found


def reason_counts(records: list[dict[str, Any]], name: str) -> dict[str, float]:
    """A ``reason:<key>``-tagged telemetry counter, summed per reason over the records."""
    counts: dict[str, float] = {}
    for record in records:
        if record.get("name") != name:
            continue
        for tag in record["tags"]:
            if tag.startswith("reason:"):
                reason = tag[len("reason:") :]
                counts[reason] = counts.get(reason, 0.0) + record["value"]
    return counts


def telemetry_total(records: list[dict[str, Any]], name: str) -> float:
    """A telemetry counter summed over every record (and every tag set) of that name."""
    return float(sum(record["value"] for record in records if record.get("name") == name))
