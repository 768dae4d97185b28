"""Connection threading models: which one should a stream listener use?

The seed (``../shared/seeds/004``) asks whether a server should run one wait loop that
hands each connection's events to that connection's thread (``shared-loop``), a wait
loop per connection (``connection-loops``), or a thread per event
(``thread-per-event``), and ends: "It's not at all clear if there are any performance
difference between these three models." This measures it.

Each run starts a Unix stream listener (4-byte length frames, the DogStatsD stream
format) with one model, and a *separate sender process* (so the sender does not
compete for the listener's GIL) that opens the load's connections, builds every frame
in advance, then on "go" writes them round-robin over its connections with blocking
``sendall``. The listener's sink counts lines under a lock. The figure is metric lines
per second from "go" until the sink has every line; a run that loses a line or counts
a framing error is reported as a failure, not a number (a stream loses nothing:
back-pressure reaches the sender instead).

Loads: few (4) or many (64) connections, times small frames (one ~40-byte line each,
one ``recv`` may hold many) or large ones (8 KiB, ~200 lines each). Every round runs
every (load, model) pair, the models in a rotated order, and the table reports the
median [min-max] of the rounds. ``--quick`` is a smoke run (1 round, fewer lines).

Run ``bench/agent/models.py``; the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from _stats import environment, load_note, source_state, summarize, table
from conveyor.agent._listen import UnixStreamListener
from conveyor.agent._models import MODELS

LENGTH = struct.Struct("<I")
LINE = "bench.requests.count:{}|c|#service:web,env:prod,route:/api/items"


@dataclass(frozen=True)
class Load:
    name: str
    connections: int
    lines_per_frame: int
    lines: int  # in all, over every connection


class LineCounter:
    """The sink: counts lines (thread-safe), and says when the expected number came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lines = 0
        self.lock = threading.Lock()
        self.complete = threading.Event()
        self.t_complete = 0.0

    def __call__(self, packet: bytes) -> None:
        n = packet.count(b"\n") + 1
        with self.lock:
            self.lines += n
            if self.lines >= self.expected and not self.complete.is_set():
                self.t_complete = time.perf_counter()
                self.complete.set()


def sender_main(path: str, connections: int, lines_per_frame: int, lines: int) -> None:
    """The sender process: connect, build the frames, say "ready", wait for "go", send."""
    socks = []
    for _ in range(connections):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        socks.append(sock)
    per_connection = lines // connections
    streams = []
    for c in range(connections):
        frames = []
        for start in range(0, per_connection, lines_per_frame):
            stop = min(per_connection, start + lines_per_frame)
            body = "\n".join(LINE.format(c * per_connection + i) for i in range(start, stop))
            packet = body.encode()
            frames.append(LENGTH.pack(len(packet)) + packet)
        # Small frames go out in writes of up to 64 frames: a client with a buffer; the
        # listener still sees one frame per packet.
        group = 64 if lines_per_frame == 1 else 1
        streams.append([b"".join(frames[i : i + group]) for i in range(0, len(frames), group)])
    print("ready", flush=True)
    sys.stdin.readline()
    position = 0
    longest = max(len(s) for s in streams)
    while position < longest:
        for sock, chunks in zip(socks, streams, strict=True):
            if position < len(chunks):
                sock.sendall(chunks[position])
        position += 1
    for sock in socks:
        sock.close()


def run_once(model: str, load: Load, directory: str) -> float | str:
    """Lines/s for one (model, load), or a string saying what went wrong."""
    path = os.path.join(directory, f"{model}.sock")
    total = (load.lines // load.connections) * load.connections
    sink = LineCounter(total)
    listener = UnixStreamListener(
        sink, path, model=model, max_connections=load.connections + 8, idle_timeout=60.0
    )
    listener.start()
    sender = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--sender",
            path,
            str(load.connections),
            str(load.lines_per_frame),
            str(load.lines),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sender.stdin is not None and sender.stdout is not None
        if sender.stdout.readline().strip() != "ready":
            return "sender failed"
        t0 = time.perf_counter()
        sender.stdin.write("go\n")
        sender.stdin.flush()
        if not sink.complete.wait(120):
            return f"lost lines: {sink.lines}/{total}"
        elapsed = sink.t_complete - t0
        sender.wait(30)
        stats = listener.statistics()
        if stats.framing_errors_total or sink.lines != total:
            return f"errors: {dict(stats.framing_errors)}, lines {sink.lines}/{total}"
        return total / elapsed
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        listener.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sender":
        path, connections, per_frame, lines = sys.argv[2:6]
        sender_main(path, int(connections), int(per_frame), int(lines))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    small, large = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    loads = [
        Load("4 connections, 1-line frames", 4, 1, small),
        Load("64 connections, 1-line frames", 64, 1, small),
        Load("4 connections, 8 KiB frames", 4, 128, large),
        Load("64 connections, 8 KiB frames", 64, 128, large),
    ]
    load_at_start = os.getloadavg()[0]
    print(environment())
    print(f"# {source_state('src/conveyor/agent', 'bench/agent')}")
    results: dict[tuple[str, str], list[float]] = {}
    failures: list[str] = []
    directory = tempfile.mkdtemp(prefix="cvb-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        for round_number in range(rounds):
            for load in loads:
                shift = round_number % len(MODELS)
                for model in MODELS[shift:] + MODELS[:shift]:
                    outcome = run_once(model, load, directory)
                    if isinstance(outcome, str):
                        failures.append(f"{model}, {load.name}: {outcome}")
                    else:
                        results.setdefault((load.name, model), []).append(outcome)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows = []
    for load in loads:
        cells = [load.name]
        medians = {}
        for model in MODELS:
            values = results.get((load.name, model), [])
            if values:
                summary = summarize(values)
                medians[model] = summary.median
                cells.append(summary.fmt(0, 1e-3))
            else:
                cells.append("failed")
        best = max(medians, key=medians.__getitem__) if medians else "-"
        cells.append(best)
        rows.append(cells)
    print(f"# rounds: {rounds}; thousands of lines/s, median [min-max]; Unix stream listener")
    print(table(("load", *MODELS, "fastest"), rows))
    for failure in failures:
        print(f"# FAILED: {failure}")
    print(load_note(load_at_start))


if __name__ == "__main__":
    main()
