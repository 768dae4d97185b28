"""Hot-path cost in the caller's thread: nanoseconds per call, conveyor against its peers.

Calls measured (each variant is a ``for`` loop calling the client's own bound method
directly, ``n`` times, timed with ``perf_counter`` as wall time in the calling thread,
so time the client's own background threads take from the caller through the GIL is
included):

* increment with two tags: ``increment(name, tags=TAGS)`` (``TAGS`` a prebuilt list of
  two tags; statsd has no tags; OTel ``Counter.add(1, attrs)``; prometheus_client
  ``Counter.labels(a, b).inc()``);
* gauge: ``gauge(name, 42.5, tags=TAGS)`` (OTel synchronous ``Gauge.set``);
* histogram: ``histogram(name, 0.25, tags=TAGS)`` (statsd ``timing``; OTel
  ``Histogram.record``; prometheus ``Histogram.labels(a, b).observe``);
* bound counter: conveyor's ``client.counter(name, TAGS).increment()``
  (prometheus_client's ``labels(a, b).inc`` bound once; the others have none).

The reference is a plain function with ``increment``'s signature that appends a tuple
to a ``collections.deque`` (``bare``). Every variant runs once per round, in an order
rotated each round; between samples (not timed) each client is drained: conveyor
``flush()``, DogStatsd ``flush_aggregated_metrics()`` (aggregation on) then
``wait_for_pending()``. Ratios are computed within each round. The socket clients send
to a receiver process on 127.0.0.1 (see ``_harness``).

Run ``bench/client/hot_path.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

from _harness import (
    ALL_PEERS,
    BARE_QUEUE,
    CLIENT_CODE,
    PEER_LABELS,
    Loop,
    Peer,
    Receiver,
    bare_loop,
    empty_loop,
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
from _stats import Summary, ratios, summarize, table

OPS = ("increment", "gauge", "histogram", "bound")
OP_LABELS = {
    "increment": "increment, 2 tags",
    "gauge": "gauge",
    "histogram": "histogram",
    "bound": "bound counter",
}


@dataclass
class Variant:
    peer: str  # "bare", "empty" or a peer key
    op: str
    run: Loop
    client: Peer | None
    n: int = 0
    samples: list[float] = field(default_factory=list)  # CPU seconds per call, per round
    walls: list[float] = field(default_factory=list)  # wall seconds per call, per round


def calibrate(v: Variant, target: float) -> None:
    """Choose ``n`` so that one sample lasts about ``target`` seconds."""
    n = 1000
    while True:
        t0 = time.thread_time()
        v.run(n)
        dt = time.thread_time() - t0
        settle(v)
        if dt > target / 4 or n >= 4_000_000:
            break
        n *= 4
    v.n = max(1000, min(4_000_000, int(n * target / max(dt, 1e-9))))


def settle(v: Variant) -> None:
    if v.client is not None:
        v.client.drain()
    BARE_QUEUE.clear()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11, help="repeats (default 11)")
    parser.add_argument(
        "--target", type=float, default=0.06, help="seconds per sample (default 0.06)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, short samples")
    add_publish_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.target = 2, 0.01
    load_start = os.getloadavg()[0]

    print(header("Client hot path", ["bench/client/hot_path.py", *argv]))
    with Receiver() as receiver:
        peers = {key: make_peer(key, receiver.port) for key in HOT_PEERS}
        variants = [
            Variant("empty", "-", empty_loop, None),
            Variant("bare", "increment", bare_loop("bench.hot.bare"), None),
        ]
        for op in OPS:
            for key, peer in peers.items():
                run = peer.loop(op, f"bench.hot.{op}")
                if run is not None:
                    variants.append(Variant(key, op, run, peer))
        for v in variants:
            calibrate(v, args.target)
        receiver.discard()

        freeze_heap()
        for r in range(args.rounds):
            shift = r % len(variants)
            for v in variants[shift:] + variants[:shift]:
                w0, c0 = time.perf_counter(), time.thread_time()
                v.run(v.n)
                c1, w1 = time.thread_time(), time.perf_counter()
                v.samples.append((c1 - c0) / v.n)
                v.walls.append((w1 - w0) / v.n)
                settle(v)
            receiver.discard()
            print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        for peer in peers.values():
            peer.close()

    with capture() as printed:
        report(variants, args.rounds)
    if wants_publish(args):
        publish(
            "client-hot-path",
            "bench/client/hot_path.py",
            argv,
            load_start,
            [chart(variants)],
            printed.getvalue(),
            code=CLIENT_CODE,
        )
    return 0


# conveyor twice: as installed (with its C fast paths) and as an install without a C
# compiler runs it (the Python methods).
HOT_PEERS = ("conveyor", "conveyor-py", *ALL_PEERS[1:])


def chart(variants: list[Variant]) -> Figure:
    """ns per call per client and call, CPU time (top row) and wall time (bottom)."""
    by = {(v.peer, v.op): v for v in variants}
    panels = []
    for attr, clock in (("samples", "CPU time"), ("walls", "wall time")):
        for op in OPS:
            bars = []
            for key in ("bare", *HOT_PEERS):
                v = by.get((key, "increment" if key == "bare" else op))
                values: list[float] = (
                    getattr(v, attr) if v and (key != "bare" or op == OPS[0]) else []
                )
                label = "bare deque-append function" if key == "bare" else PEER_LABELS[key]
                role: Role = (
                    "conveyor"
                    if key.startswith("conveyor")
                    else "reference"
                    if key == "bare"
                    else "peer"
                )
                bars.append(Bar(label, [x * 1e9 for x in values], role))
            panels.append(Panel(f"{OP_LABELS[op]} ({clock})", f"ns per call, {clock}", bars))
    return Figure(
        "client-hot-path",
        "Client hot path: ns per call in the caller's thread (CPU time, then wall time)",
        panels,
        columns=len(OPS),
        share_x=True,
    )


def report(variants: list[Variant], rounds: int) -> None:
    by = {(v.peer, v.op): v for v in variants}
    bare = by["bare", "increment"]
    empty = by["empty", "-"]

    def grid(attr: str) -> str:
        def cell(v: Variant) -> str:
            values: list[float] = getattr(v, attr)
            return summarize(values).fmt(0, 1e9)

        rows = [["bare deque-append function", cell(bare), "", "", ""]]
        for key in HOT_PEERS:
            cells = [PEER_LABELS[key]]
            for op in OPS:
                v = by.get((key, op))
                cells.append(cell(v) if v else "n/a")
            rows.append(cells)
        return table(["client", *(OP_LABELS[op] for op in OPS)], rows)

    print(
        f"Rounds: {rounds}. Each cell: ns per call, median [min-max] over the rounds. "
        f"Includes the `for` loop, which alone costs {summarize(empty.samples).fmt(0, 1e9)} ns."
    )
    print()
    print("CPU time of the calling thread (`time.thread_time`; robust to other load):")
    print()
    print(grid("samples"))
    print()
    print(
        "Wall time in the calling thread (`perf_counter`; includes the GIL time taken by "
        "the client's own threads, and preemption by other processes on the machine):"
    )
    print()
    print(grid("walls"))
    print()

    def per_round(a: tuple[str, str], b: tuple[str, str], attr: str = "samples") -> Summary:
        num: list[float] = getattr(by[a], attr)
        den: list[float] = getattr(by[b], attr)
        return summarize(ratios(num, den))

    checks = [
        (
            "conveyor increment (2 tags) / bare function",
            ("conveyor", "increment"),
            ("bare", "increment"),
            "<= 2.5",
        ),
        (
            "DogStatsd (bg sender, aggregation on) increment / conveyor increment",
            ("dd-agg", "increment"),
            ("conveyor", "increment"),
            ">= 8",
        ),
        (
            "conveyor bound counter / bare function",
            ("conveyor", "bound"),
            ("bare", "increment"),
            "<= 1.5",
        ),
    ]
    rows = []
    for label, a, b, target in checks:
        cpu, wall = per_round(a, b), per_round(a, b, "walls")
        rows.append([label, cpu.fmt(2), wall.fmt(2), target, verdict(cpu.median, target)])
    for label, a, b in (
        (
            "conveyor, Python only: increment (2 tags) / bare function",
            ("conveyor-py", "increment"),
            ("bare", "increment"),
        ),
        (
            "DogStatsd (bg sender, aggregation on) increment / conveyor, Python only",
            ("dd-agg", "increment"),
            ("conveyor-py", "increment"),
        ),
    ):
        rows.append([label, per_round(a, b).fmt(2), per_round(a, b, "walls").fmt(2), "", ""])
    for key in ("dd-noagg", "statsd", "otel", "prometheus"):
        a, b = (key, "increment"), ("conveyor", "increment")
        rows.append(
            [
                f"{PEER_LABELS[key]} increment / conveyor increment",
                per_round(a, b).fmt(1),
                per_round(a, b, "walls").fmt(1),
                "",
                "",
            ]
        )
    print(
        table(
            [
                "ratio (per round)",
                "CPU: median [min-max]",
                "wall: median [min-max]",
                "target",
                "as measured (CPU median)",
            ],
            rows,
        )
    )
    print()
    print(
        "Ratios are computed within each round, then summarised; a target is judged on the "
        "median of the CPU-time ratios."
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
