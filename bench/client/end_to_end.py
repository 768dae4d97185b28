"""End to end: 1,000,000 increments (two tags) from 1 and from 4 threads into a local
receiver; emit rate, delivered, lost.

One trial: a fresh client; 1,000 warm-up calls under another name (starts its
threads), drained; then ``threads`` threads released together by a barrier make
``calls / threads`` calls each of ``increment(name, tags=TAGS)`` (a name unique to the
trial). *Emit rate* is calls / the time from the release until the last thread
returned. Then the client is closed (not timed in the emit rate): conveyor
``close()`` (a flush rendez-vous with its sender), DogStatsd ``stop()`` (the only call
that drains its aggregator, buffer and sender queue; research notes 1.8), statsd
nothing (it sends synchronously). *Delivered* is what the receiver process counted for
the trial's name after that (sum of counter values / sample rate), *lost* = calls -
delivered; *kernel drops* is the growth of the receiver socket's drop counter during
the trial (``/proc/net/udp``). OpenTelemetry and prometheus_client have no socket path
and are not part of this benchmark.

Trials are interleaved: every round runs every client at 1 then 4 threads, in an order
rotated each round; medians and [min-max] are over the rounds, and the 4-thread /
1-thread ratio is computed within each round.

Run ``bench/client/end_to_end.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass

from _harness import (
    CLIENT_CODE,
    PEER_LABELS,
    SOCKET_PEERS,
    Receiver,
    freeze_heap,
    header,
    make_peer,
    sched_delta,
    tasks_sched,
    thread_sched,
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
from _stats import ratios, summarize, table

THREADS = (1, 4)


@dataclass
class Trial:
    calls: int
    emit_s: float
    cpu_s: float  # CPU time of all the process's threads during the calls
    wait_s: float  # time those threads were runnable but had no CPU (other load)
    close_s: float
    delivered: float
    kernel_drops: int
    closed_ok: bool
    client_drops: str

    @property
    def rate(self) -> float:
        return self.calls / self.emit_s

    @property
    def cpu_rate(self) -> float:
        return self.calls / self.cpu_s

    @property
    def lost(self) -> float:
        return self.calls - self.delivered


def trial(key: str, threads: int, calls: int, receiver: Receiver, tag: str) -> Trial:
    name = f"bench.e2e.{key.replace('-', '_')}.t{threads}.{tag}"
    peer = make_peer(key, receiver.port)
    warm = peer.loop("increment", name + ".warm")
    assert warm is not None
    warm(1000)
    peer.drain()
    before = receiver.count(name + ".warm")
    loop = peer.loop("increment", name)
    assert loop is not None
    shares = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    ends = [0.0] * threads
    own = [(0, 0)] * threads  # each caller's (CPU ns, run-queue wait ns) over its calls
    tids = [0] * threads

    def worker(i: int) -> None:
        tids[i] = threading.get_native_id()
        barrier.wait()
        c0, w0 = thread_sched()
        loop(shares[i])
        ends[i] = time.perf_counter()
        c1, w1 = thread_sched()
        own[i] = (c1 - c0, w1 - w0)

    workers = [
        threading.Thread(target=worker, args=(i,), name=f"caller-{i}") for i in range(threads)
    ]
    for t in workers:
        t.start()
    gc.collect()
    barrier.wait()
    t0 = time.perf_counter()
    others0 = tasks_sched()
    for t in workers:
        t.join()
    emit = max(ends) - t0
    others1 = {tid: v for tid, v in tasks_sched().items() if tid not in tids}
    cpu, wait = sched_delta(others0, others1)
    cpu += sum(c for c, _ in own) / 1e9
    wait += sum(w for _, w in own) / 1e9
    c0 = time.perf_counter()
    ok = peer.close()
    close = time.perf_counter() - c0
    after = receiver.count(name)
    drops = after.kernel_drops - before.kernel_drops if before.kernel_drops >= 0 else -1
    return Trial(calls, emit, cpu, wait, close, after.value, drops, ok, peer.dropped())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repeats (default 3)")
    parser.add_argument(
        "--calls", type=int, default=1_000_000, help="calls per trial (default 1,000,000)"
    )
    parser.add_argument(
        "--peers",
        default=",".join(SOCKET_PEERS),
        help=f"comma-separated subset of {','.join(SOCKET_PEERS)}",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 50,000 calls")
    add_publish_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 50_000
    load_start = os.getloadavg()[0]
    keys = [k for k in args.peers.split(",") if k]
    for k in keys:
        if k not in SOCKET_PEERS:
            parser.error(f"unknown peer {k!r}")

    print(header("Client end to end", ["bench/client/end_to_end.py", *argv]))
    results: dict[tuple[str, int], list[Trial]] = {(k, t): [] for k in keys for t in THREADS}
    for key in keys:  # import every client library before the heap is frozen
        make_peer(key, 9).close()
    freeze_heap()
    with Receiver() as receiver:
        print(
            f"Receiver: separate process, UDP 127.0.0.1:{receiver.port}, SO_RCVBUF "
            f"{receiver.rcvbuf // 1024} KiB as reported by the kernel (8 MiB asked; Linux "
            f"reports twice the size it grants for bookkeeping)."
        )
        print()
        for r in range(args.rounds):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                for threads in THREADS:
                    res = trial(key, threads, args.calls, receiver, f"r{r}")
                    results[key, threads].append(res)
                    print(
                        f"# round {r + 1}/{args.rounds} {key} x{threads}: "
                        f"{res.rate:,.0f}/s ({res.cpu_rate:,.0f} per CPU-s, run-queue wait "
                        f"{res.wait_s / res.emit_s:.0%}), delivered {res.delivered:,.0f}, "
                        f"kernel drops {res.kernel_drops}, close {res.close_s:.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    gc.collect()

    with capture() as printed:
        report(results, keys, args.rounds, args.calls)
    if wants_publish(args):
        publish(
            "client-end-to-end",
            "bench/client/end_to_end.py",
            argv,
            load_start,
            [chart(results, keys, args.calls)],
            printed.getvalue(),
            code=CLIENT_CODE,
        )
    return 0


def chart(results: dict[tuple[str, int], list[Trial]], keys: list[str], calls: int) -> Figure:
    """Emit rate (wall) and calls per CPU-second per client, 1 and 4 threads; a client
    that lost calls says how many."""
    panels = []
    for attr, what in (("rate", "emit rate (wall)"), ("cpu_rate", "per CPU-second")):
        for threads in THREADS:
            bars = []
            for key in keys:
                trials = results[key, threads]
                lost = max(t.lost for t in trials)
                note = f"(lost up to {lost / calls:.1%} of the calls)" if lost > 0 else ""
                values = [getattr(t, attr) / 1e3 for t in trials]
                role: Role = "conveyor" if key == "conveyor" else "peer"
                bars.append(Bar(PEER_LABELS[key], values, role, note))
            unit = "k increments/s" if attr == "rate" else "k increments per CPU-second"
            title = f"{what}, {threads} thread{'s' if threads > 1 else ''}"
            panels.append(Panel(title, unit, bars, better="higher"))
    return Figure(
        "client-end-to-end",
        f"End to end: {calls:,} increments (2 tags) into a local UDP receiver",
        panels,
        columns=len(THREADS),
        share_x=True,
    )


def report(
    results: dict[tuple[str, int], list[Trial]], keys: list[str], rounds: int, calls: int
) -> None:
    print(
        f"Rounds: {rounds}; {calls:,} calls per trial (split evenly across the threads). "
        "Each cell: median [min-max] over the rounds. *Emit rate*: calls / wall time of the "
        "calls. *Per CPU-s*: calls / CPU time of all the process's threads during the calls "
        "(callers and the client's own threads): what the rate would be if the process had "
        "the machine to itself (under the GIL it cannot use more than about one core). "
        "*Run-queue wait*: time the process's threads were runnable but not on a CPU "
        "(`/proc/<tid>/schedstat`: other processes' load, or the process's own threads "
        "queueing for the 2 CPUs), summed over the threads, as a share of the wall time "
        "(over 100% when several threads waited at once)."
    )
    print()
    rows = []
    for key in keys:
        for threads in THREADS:
            ts = results[key, threads]
            rows.append(
                [
                    PEER_LABELS[key],
                    str(threads),
                    summarize([t.rate for t in ts]).fmt(0, 1e-3),
                    summarize([t.cpu_rate for t in ts]).fmt(0, 1e-3),
                    summarize([t.wait_s / t.emit_s for t in ts]).fmt(0, 100),
                    summarize([t.delivered for t in ts]).fmt(0),
                    summarize([t.lost for t in ts]).fmt(0),
                    summarize([float(t.kernel_drops) for t in ts]).fmt(0),
                    summarize([t.close_s for t in ts]).fmt(2),
                    "; ".join(sorted({t.client_drops for t in ts if t.client_drops})) or "-",
                ]
            )
    print(
        table(
            [
                "client",
                "threads",
                "emit rate (k/s)",
                "per CPU-s (k)",
                "run-queue wait (%)",
                "delivered",
                "lost",
                "kernel drops",
                "close (s)",
                "client-counted drops",
            ],
            rows,
            right=1,
        )
    )
    print()
    print(
        "OpenTelemetry and prometheus_client: not measured here (no socket path; hot path "
        "and interference only)."
    )
    print()
    if "conveyor" not in keys:
        return
    one = results["conveyor", 1]
    four = results["conveyor", 4]
    both = one + four
    rows2 = []
    for label, ts in (("1 thread", one), ("4 threads, in total", four)):
        wall = summarize([t.rate for t in ts])
        cpu = summarize([t.cpu_rate for t in ts])
        rows2.append(
            [
                f"conveyor, {label}: k increments/s (wall)",
                wall.fmt(0, 1e-3),
                ">= 1,500",
                verdict(wall.median, ">= 1.5e6"),
            ]
        )
        rows2.append(
            [
                f"conveyor, {label}: k increments per CPU-s",
                cpu.fmt(0, 1e-3),
                "(>= 1,500)",
                verdict(cpu.median, ">= 1.5e6"),
            ]
        )
    for attr in ("rate", "cpu_rate"):
        s4 = summarize(ratios([getattr(t, attr) for t in four], [getattr(t, attr) for t in one]))
        what = "wall" if attr == "rate" else "per CPU-s"
        rows2.append(
            [
                f"conveyor, 4 threads / 1 thread ({what}, per round)",
                s4.fmt(2),
                "(no collapse)",
                "",
            ]
        )
    rows2.append(
        [
            "conveyor: every call delivered, in every trial",
            f"lost {max(t.lost for t in both):,.0f} at most",
            "lost = 0",
            "met" if all(t.lost == 0 for t in both) else "NOT met",
        ]
    )
    for key in keys:
        if key == "conveyor":
            continue
        for threads in THREADS:
            for attr, what in (("rate", "emit rate"), ("cpu_rate", "per CPU-s")):
                s = summarize(
                    ratios(
                        [getattr(t, attr) for t in results["conveyor", threads]],
                        [getattr(t, attr) for t in results[key, threads]],
                    )
                )
                rows2.append(
                    [
                        f"{what}, conveyor / {PEER_LABELS[key]}, {threads} thread(s)",
                        s.fmt(1),
                        "",
                        "",
                    ]
                )
    print(table(["measure", "median [min-max]", "target", "as measured"], rows2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
