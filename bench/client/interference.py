"""Interference: p50/p99/p99.9 latency of a ~200 us pure-Python request that records 5
metrics, against the same loop with no metrics.

A request is a pure-Python loop calibrated at start-up to take about 200 us, then five
calls on the client: a counter with two tags, a histogram of the request's latency, a
gauge, a second counter (other tags) and a timing (statsd: incr/timing/gauge/incr/timing
without tags; OTel: Counter.add/Histogram.record/Gauge.set/...; prometheus_client:
``labels(...).inc()/observe()/set()``). Requests run back to back in the main thread; the
latency of each (work + metrics) is taken with ``perf_counter``, so it includes any time
the client's own threads hold the GIL. The baseline ("no metrics") is the same loop
without the five calls.

Each round runs every client once, in an order rotated each round, as one block of
``--requests`` requests on a client created fresh for the block (plus untimed warm-up
requests that start its threads) and closed after it, so that no client's background
threads run during another's block. Every client block is preceded by its own
no-metrics block, its baseline: the machine is shared and its speed drifts over
seconds, so a block is compared only with the baseline measured just before it.
Percentiles are taken per block; cells give the median [min-max] over the rounds.

The machine is shared, so a request can also be slow because the OS preempted the
thread for another process. After every request (outside the timed region) the
thread's involuntary context switches are read (``getrusage(RUSAGE_THREAD)``); the
second table repeats the percentiles over the requests during which the thread was not
preempted. Waiting for the GIL is a *voluntary* switch, so interference by a client's
own threads stays in that view.

Run ``bench/client/interference.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _harness import (
    ALL_PEERS,
    CLIENT_CODE,
    PEER_LABELS,
    Receiver,
    freeze_heap,
    header,
    make_peer,
    verdict,
)

from _charts import (
    Bar,
    Figure,
    Panel,
    Role,
    add_publish_option,
    capture,
    publish,
    wants_publish,
)
from _stats import percentile, ratios, summarize, table

# The maximum too: a client that saves its work for rare long rounds pays for its
# percentiles there, and the table should show it.
QUANTILES = (("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))


def work(k: int) -> int:
    """The request's pure-Python part."""
    acc = 0
    for i in range(k):
        acc = (acc * 31 + i) & 0xFFFF
    return acc


def calibrate(target: float) -> int:
    """``k`` such that ``work(k)`` takes about ``target`` seconds (best of a few)."""
    k = 1000
    deadline = time.perf_counter() + 1.0  # the CPU's clock settles first
    while time.perf_counter() < deadline:
        work(k)
    best = min(_time(k) for _ in range(5))
    k = int(k * target / best)
    best = min(_time(k) for _ in range(20))
    return max(1, int(k * target / best))


def _time(k: int) -> float:
    t0 = time.perf_counter()
    work(k)
    return time.perf_counter() - t0


@dataclass
class Block:
    """One block's latencies (seconds) and which requests the OS preempted."""

    lat: list[float]
    preempted: list[bool]

    def quantiles(self, clean: bool) -> dict[str, float]:
        data = sorted(x for x, p in zip(self.lat, self.preempted, strict=True) if not (clean and p))
        return {name: percentile(data, q) for name, q in QUANTILES}


@dataclass
class Series:
    key: str
    blocks: list[Block] = field(default_factory=list)
    baselines: list[Block] = field(default_factory=list)  # the no-metrics block before each
    drops: set[str] = field(default_factory=set)  # what the client counted as dropped


def run_block(
    k: int, n: int, warm: int, record: Callable[[float], None] | None
) -> tuple[list[float], list[bool]]:
    lat = [0.0] * n
    pre = [False] * n
    clock = time.perf_counter
    usage = resource.getrusage
    who = resource.RUSAGE_THREAD
    if record is None:
        for _ in range(warm):
            work(k)
        last = usage(who).ru_nivcsw
        for i in range(n):
            t0 = clock()
            work(k)
            lat[i] = clock() - t0
            now = usage(who).ru_nivcsw
            pre[i] = now != last
            last = now
    else:
        for _ in range(warm):
            t0 = clock()
            work(k)
            record(clock() - t0)
        last = usage(who).ru_nivcsw
        for i in range(n):
            t0 = clock()
            work(k)
            record(clock() - t0)
            lat[i] = clock() - t0
            now = usage(who).ru_nivcsw
            pre[i] = now != last
            last = now
    return lat, pre


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="repeats (default 7)")
    parser.add_argument(
        "--requests",
        type=int,
        default=10_000,
        help="timed requests per block (default 10,000: about 2 s, so that a block spans a "
        "flush interval of every client)",
    )
    parser.add_argument(
        "--work-us", type=float, default=200.0, help="request work in us (default 200)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 300 requests")
    add_publish_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 1, 300
    load_start = os.getloadavg()[0]
    warm = max(50, args.requests // 10)

    print(header("Client interference", ["bench/client/interference.py", *argv]))
    k = calibrate(args.work_us * 1e-6)
    keys = list(ALL_PEERS)
    series = {key: Series(key) for key in keys}
    for key in keys:  # import every client library before the heap is frozen
        make_peer(key, 9).close()
    freeze_heap()
    with Receiver() as receiver:
        for r in range(args.rounds):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                # The no-metrics block right before each client's block is that block's
                # baseline: the machine is shared, and its speed drifts between blocks.
                gc.collect()
                lat, pre = run_block(k, args.requests, warm, None)
                series[key].baselines.append(Block(lat, pre))
                peer = make_peer(key, receiver.port)
                record = peer.recorder()
                gc.collect()
                lat, pre = run_block(k, args.requests, warm, record)
                series[key].blocks.append(Block(lat, pre))
                peer.close()
                series[key].drops.add(peer.dropped())
                receiver.discard()
            print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    with capture() as printed:
        report(series, k, args.rounds, args.requests, warm)
    if wants_publish(args):
        publish(
            "client-interference",
            "bench/client/interference.py",
            argv,
            load_start,
            [chart(series, args.requests)],
            printed.getvalue(),
            code=CLIENT_CODE,
        )
    return 0


def chart(series: dict[str, Series], requests: int) -> Figure:
    """Each percentile per client next to the no-metrics blocks: over all requests (top
    row) and over those the OS did not preempt (bottom row: robust to other load)."""
    blocks = [b for s in series.values() for b in s.baselines]
    mean = sum(sum(b.lat) / len(b.lat) for b in blocks) / len(blocks)
    panels = []
    for clean, view in ((False, "all requests"), (True, "not preempted")):
        baselines = [b.quantiles(clean) for b in blocks]
        for name, _ in QUANTILES:
            bars = [
                Bar(
                    "no metrics (every baseline block)",
                    [q[name] * 1e6 for q in baselines],
                    "reference",
                )
            ]
            for key, s in series.items():
                values = [b.quantiles(clean)[name] * 1e6 for b in s.blocks]
                role: Role = "conveyor" if key == "conveyor" else "peer"
                bars.append(Bar(PEER_LABELS[key], values, role))
            panels.append(Panel(f"{name}, {view}", "us per request", bars))
    return Figure(
        "client-interference",
        f"Interference: latency of a pure-Python request ({mean * 1e6:.0f} us on average "
        f"without metrics) that records 5 metrics; {requests:,} requests per block",
        panels,
        columns=len(QUANTILES),
    )


def report(series: dict[str, Series], k: int, rounds: int, requests: int, warm: int) -> None:
    keys = list(series)
    all_base = [b for s in series.values() for b in s.baselines]
    mean_base = sum(sum(b.lat) / len(b.lat) for b in all_base) / len(all_base)
    print(
        f"Request: `work({k})` (mean {mean_base * 1e6:.0f} us without metrics) + 5 metric "
        f"calls. Rounds: {rounds}; {requests:,} timed requests per block (+{warm} untimed "
        "warm-up); every client block is preceded by its own no-metrics block. Cells: us, "
        "median [min-max] over the rounds of each block's percentile; *vs none*: that "
        "percentile / the one of the no-metrics block just before it (same round)."
    )
    print()

    def over(key: str, name: str, clean: bool) -> list[float]:
        s = series[key]
        return ratios(
            [b.quantiles(clean)[name] for b in s.blocks],
            [b.quantiles(clean)[name] for b in s.baselines],
        )

    for clean in (False, True):
        print(
            "Requests the OS did not preempt (no involuntary context switch):"
            if clean
            else "All requests:"
        )
        print()
        bq = [b.quantiles(clean) for b in all_base]
        base_preempted = sum(sum(b.preempted) for b in all_base) / sum(len(b.lat) for b in all_base)
        rows = [
            ["no metrics (every baseline block)"]
            + [summarize([q[name] for q in bq]).fmt(1, 1e6) for name, _ in QUANTILES]
            + ["1"] * len(QUANTILES)
            + [f"{base_preempted:.1%}", "-"]
        ]
        for key in keys:
            blocks = series[key].blocks
            qs = [b.quantiles(clean) for b in blocks]
            cells = [PEER_LABELS[key]]
            for name, _ in QUANTILES:
                cells.append(summarize([q[name] for q in qs]).fmt(1, 1e6))
            for name, _ in QUANTILES:
                cells.append(summarize(over(key, name, clean)).fmt(3))
            excluded = sum(sum(b.preempted) for b in blocks)
            total = sum(len(b.lat) for b in blocks)
            cells.append(f"{excluded / total:.1%}")
            cells.append("; ".join(sorted(d for d in series[key].drops if d)) or "-")
            rows.append(cells)
        print(
            table(
                [
                    "client",
                    *(f"{name} (us)" for name, _ in QUANTILES),
                    *(f"{name} vs none" for name, _ in QUANTILES),
                    "preempted",
                    "client-counted drops",
                ],
                rows,
            )
        )
        print()

    print(
        "Targets (p99). Judged on *pooled* percentiles: every request of every round of "
        "a client, against every request of every no-metrics block. The machine slows a "
        "few percent of all requests by ~100 us in bursts, no matter what runs, so one "
        "block's p99 mostly says whether a burst fell in it; pooling the rounds (whose "
        "order rotates) evens that out, and one shared baseline makes 'below every "
        "peer' a direct comparison of the clients' pooled p99s. The per-round ratios "
        "(median [min-max], each block against the no-metrics block just before it) "
        "show the spread."
    )
    print()
    all_baselines = [b for s in series.values() for b in s.baselines]

    def pooled_ratio(key: str, name: str, clean: bool) -> float:
        return pooled(series[key].blocks, clean)[name] / pooled(all_baselines, clean)[name]

    rows = []
    for clean in (False, True):
        view = "not preempted" if clean else "all requests"
        conv = pooled_ratio("conveyor", "p99", clean)
        rows.append(
            [
                f"conveyor p99 / no-metrics p99 ({view})",
                f"{conv:.3f}",
                summarize(over("conveyor", "p99", clean)).fmt(3),
                "<= 1.05",
                verdict(conv, "<= 1.05"),
            ]
        )
        for key in keys[1:]:
            theirs = pooled_ratio(key, "p99", clean)
            per_round = summarize(ratios(over("conveyor", "p99", clean), over(key, "p99", clean)))
            rows.append(
                [
                    f"conveyor (p99 vs none) / {PEER_LABELS[key]} (p99 vs none) ({view})",
                    f"{conv / theirs:.3f}",
                    per_round.fmt(3),
                    "< 1",
                    "met" if conv / theirs < 1 else "NOT met",
                ]
            )
    print(
        table(
            ["measure", "pooled", "per round: median [min-max]", "target", "as measured (pooled)"],
            rows,
        )
    )


def pooled(blocks: list[Block], clean: bool) -> dict[str, float]:
    """Each percentile over the requests of all ``blocks`` together."""
    data = sorted(
        x for b in blocks for x, p in zip(b.lat, b.preempted, strict=True) if not (clean and p)
    )
    return {name: percentile(data, q) for name, q in QUANTILES}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
