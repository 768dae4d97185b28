"""Design benchmark: which caller -> sender hand-off should the client use?

The issue asked for the path "built from conveyor.ring where it pays; let the benchmark
decide between a shared queue and per-thread buffers". Candidates, each carrying one
``(name, tags)`` record per call from producer threads to one consumer thread, all
bounded at 65,536 records (a full structure makes the producer give the GIL away with
``os.sched_yield()`` and retry, or block in ``put``; nothing is dropped):

* ``deque`` (what the client does): ``q.append((name, tags))`` then a length check; the
  consumer takes ``len(q)`` records with ``Counter.update(islice(iter(q.popleft, None),
  n))``, a C-level loop.
* ``ring MP->SC``: one ``RingQueue`` of preallocated slots, ``MPSequence`` for the
  producers (claim a cursor, write two attributes, ``done``), ``SCSequence`` for the
  consumer, which reads whole batches (``next``/``available``/one ``done``).
* ``ring MP->MC``: the same with an ``MCSequence`` consumer (one cursor per ``next``/
  ``done``: what a consumer *pool* would use; here with one consumer).
* ``per-thread SP rings``: every producer thread gets its own ``RingQueue`` +
  ``SPSequence`` (found through a ``threading.local``) and never shares a cursor; the
  consumer visits every lane and reads batches with an ``SCSequence`` per lane.
* ``queue.Queue(maxsize)``: ``put`` / consumer ``get()`` then ``get_nowait()`` until empty.
* ``queue.SimpleQueue`` (C, unbounded; bounded here by a ``qsize()`` check): ``put`` /
  the same consumer as ``Queue``.

The consumer polls: it drains everything available, and sleeps 0.5 ms when it found
nothing (``Queue``/``SimpleQueue``: blocks in ``get``). It folds what it reads into a
``Counter`` per ``(name, tags)``, as the client's sender does.

Per trial: ``--calls`` records from 1 or 4 producer threads released by a barrier.
Reported per candidate: wall ns per call (wall time of the calls / calls: per call of
the one thread, or of the four together), the total rate, the process CPU time per
record until the consumer has everything (producers + consumer; robust to other load on
the machine), and how long the consumer needed after the last call. Trials are
interleaved round-robin with a rotated order; cells are median [min-max] over rounds.

Run ``bench/client/queue_choice.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from _harness import header

from _stats import ratios, summarize, table
from conveyor.ring import (
    MCSequence,
    MPSequence,
    RingQueue,
    SCSequence,
    SPSequence,
    YieldingWait,
)

CAPACITY = 65_536
THREADS = (1, 4)
NAME = "bench.queue"
TAGS = ("env:bench", "route:home")
IDLE = 0.0005

Key = tuple[str, tuple[str, ...]]
Record = Callable[[str, tuple[str, ...]], None]
_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))


class Slot:
    __slots__ = ("name", "tags")

    def __init__(self) -> None:
        self.name = ""
        self.tags: tuple[str, ...] = ()


class Candidate:
    """A hand-off: ``record`` for producers, ``drain`` for the consumer (returns how
    many records it took; 0 means it found nothing)."""

    label = ""

    def __init__(self) -> None:
        self.counts: Counter[Key] = Counter()

    def record(self) -> Record:
        raise NotImplementedError

    def attach(self) -> None:
        """Called once by each producer thread before it is released (not timed)."""

    def drain(self) -> int:
        raise NotImplementedError

    def idle(self) -> None:
        time.sleep(IDLE)


class DequeCandidate(Candidate):
    label = "shared deque (the client's choice)"

    def __init__(self) -> None:
        super().__init__()
        self.q: deque[Key] = deque()

    def record(self) -> Record:
        q = self.q
        append = q.append

        def record(name: str, tags: tuple[str, ...]) -> None:
            append((name, tags))
            if len(q) >= CAPACITY:
                while len(q) >= CAPACITY:
                    _yield()

        return record

    def drain(self) -> int:
        n = len(self.q)
        if n:
            self.counts.update(itertools.islice(iter(self.q.popleft, None), n))
        return n


class MPRing(Candidate):
    label = "ring: MPSequence -> SCSequence"

    def __init__(self, multi_consumer: bool = False) -> None:
        super().__init__()
        self.ring: RingQueue[Slot] = RingQueue(Slot, CAPACITY)
        self.pub = MPSequence(CAPACITY, wait=YieldingWait())
        self.multi = multi_consumer
        if multi_consumer:
            self.label = "ring: MPSequence -> MCSequence"
            self.mc = MCSequence(CAPACITY, wait=YieldingWait())
            self.pub.then(self.mc).then(self.pub)
        else:
            self.sc = SCSequence(wait=YieldingWait())
            self.pub.then(self.sc).then(self.pub)

    def record(self) -> Record:
        claim = self.pub.next
        done = self.pub.done
        get = self.ring.get

        def record(name: str, tags: tuple[str, ...]) -> None:
            c = claim()
            while c < 0:  # -1: ring full, -2: lost the claim race
                _yield()
                c = claim()
            slot = get(c)
            slot.name = name
            slot.tags = tags
            done(c)

        return record

    def drain(self) -> int:
        get = self.ring.get
        if self.multi:
            mc = self.mc
            n = 0
            keys = []
            while True:
                c = mc.next()
                if c == -2:
                    continue
                if c < 0:
                    break
                slot = get(c)
                keys.append((slot.name, slot.tags))
                mc.done(c)
                n += 1
            self.counts.update(keys)
            return n
        sc = self.sc
        c = sc.next()
        if c < 0:
            return 0
        hi = sc.available()
        keys = []
        for i in range(c, hi):
            slot = get(i)
            keys.append((slot.name, slot.tags))
        sc.done(hi - 1)
        self.counts.update(keys)
        return hi - c


class _Lane:
    __slots__ = ("get", "pub", "sub")

    def __init__(self) -> None:
        ring: RingQueue[Slot] = RingQueue(Slot, CAPACITY)
        self.get = ring.get
        self.pub = SPSequence(CAPACITY, wait=YieldingWait())
        self.sub = SCSequence(wait=YieldingWait())
        self.pub.then(self.sub).then(self.pub)


class PerThreadRings(Candidate):
    label = "per-thread SPSequence rings"

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()
        self.lanes: list[_Lane] = []
        self.lock = threading.Lock()

    def attach(self) -> None:
        # Building a lane's 65,536 slots takes tens of ms: a one-time cost per thread,
        # kept out of the timed calls (a real client would pay it on a thread's first
        # call).
        self._lane()

    def _lane(self) -> _Lane:
        lane = _Lane()
        with self.lock:
            self.lanes = [*self.lanes, lane]  # the consumer iterates a snapshot
        self.local.lane = lane
        return lane

    def record(self) -> Record:
        local = self.local
        new_lane = self._lane

        def record(name: str, tags: tuple[str, ...]) -> None:
            try:
                lane: _Lane = local.lane
            except AttributeError:
                lane = new_lane()
            pub = lane.pub
            c = pub.next()
            while c < 0:
                _yield()
                c = pub.next()
            slot = lane.get(c)
            slot.name = name
            slot.tags = tags
            pub.done(c)

        return record

    def drain(self) -> int:
        total = 0
        keys = []
        for lane in self.lanes:
            sub = lane.sub
            c = sub.next()
            if c < 0:
                continue
            hi = sub.available()
            get = lane.get
            for i in range(c, hi):
                slot = get(i)
                keys.append((slot.name, slot.tags))
            sub.done(hi - 1)
            total += hi - c
        self.counts.update(keys)
        return total


class QueueCandidate(Candidate):
    label = "queue.Queue(maxsize)"

    def __init__(self, simple: bool = False) -> None:
        super().__init__()
        self.simple = simple
        self.q: queue.Queue[Key] | queue.SimpleQueue[Key]
        if simple:
            self.label = "queue.SimpleQueue (+ qsize bound)"
            self.q = queue.SimpleQueue()
        else:
            self.q = queue.Queue(CAPACITY)

    def record(self) -> Record:
        q = self.q
        put = q.put
        if not self.simple:

            def record(name: str, tags: tuple[str, ...]) -> None:
                put((name, tags))

            return record
        qsize = q.qsize

        def record_simple(name: str, tags: tuple[str, ...]) -> None:
            put((name, tags))
            if qsize() >= CAPACITY:
                while qsize() >= CAPACITY:
                    _yield()

        return record_simple

    def drain(self) -> int:
        try:
            first = self.q.get(timeout=IDLE)
        except queue.Empty:
            return 0
        keys = [first]
        get = self.q.get_nowait
        try:
            while True:
                keys.append(get())
        except queue.Empty:
            pass
        self.counts.update(keys)
        return len(keys)

    def idle(self) -> None:
        pass  # drain() already waited in get()


FACTORIES: dict[str, Callable[[], Candidate]] = {
    "deque": DequeCandidate,
    "mp-sc": MPRing,
    "mp-mc": lambda: MPRing(multi_consumer=True),
    "per-thread": PerThreadRings,
    "queue": QueueCandidate,
    "simplequeue": lambda: QueueCandidate(simple=True),
}


@dataclass
class Result:
    wall_per_call: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    cpu_per_item: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)


def trial(key: str, threads: int, calls: int) -> tuple[float, float, float]:
    """(wall seconds of the calls, process CPU seconds until all consumed, lag)."""
    cand = FACTORIES[key]()
    received = 0
    stop = threading.Event()

    def consumer() -> None:
        nonlocal received
        while True:
            n = cand.drain()
            received += n
            if not n:
                if stop.is_set():
                    return
                cand.idle()

    shares = [calls // threads + (1 if i < calls % threads else 0) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    ends = [0.0] * threads

    def producer(i: int) -> None:
        record = cand.record()
        cand.attach()
        n = shares[i]
        barrier.wait()
        for _ in range(n):
            record(NAME, TAGS)
        ends[i] = time.perf_counter()

    cons = threading.Thread(target=consumer, name="consumer")
    prods = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    cons.start()
    for t in prods:
        t.start()
    gc.collect()
    cpu0 = time.process_time()
    barrier.wait()
    t0 = time.perf_counter()
    for t in prods:
        t.join()
    emit_end = max(ends)
    while received < calls:
        time.sleep(0.0005)
    done = time.perf_counter()
    cpu = time.process_time() - cpu0
    stop.set()
    cons.join()
    if received != calls or cand.counts[NAME, TAGS] != calls:
        raise AssertionError(f"{key}: consumer saw {received} of {calls}")
    return emit_end - t0, cpu, done - emit_end


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="repeats (default 5)")
    parser.add_argument(
        "--calls", type=int, default=300_000, help="records per trial (default 300,000)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 20,000 calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls = 1, 20_000

    print(header("Client queue choice", ["bench/client/queue_choice.py", *argv]))
    keys = list(FACTORIES)
    labels = {k: FACTORIES[k]().label for k in keys}
    results = {(k, t): Result() for k in keys for t in THREADS}
    for r in range(args.rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            for threads in THREADS:
                wall, cpu, lag = trial(key, threads, args.calls)
                res = results[key, threads]
                res.wall_per_call.append(wall / args.calls)
                res.rate.append(args.calls / wall)
                res.cpu_per_item.append(cpu / args.calls)
                res.lag.append(lag)
        print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(
        f"Rounds: {args.rounds}; {args.calls:,} records per trial; capacity {CAPACITY:,}. "
        "Cells: median [min-max] over the rounds. *Wall ns/call*: wall time of the calls / "
        "calls (with 4 threads: of the four together). *CPU ns/record*: process CPU time "
        "(producers + consumer) from the release of the producers until the consumer had "
        "every record, / records. *vs deque*: per-round ratio of the CPU cost to the "
        "deque's."
    )
    print()
    rows = []
    for key in keys:
        for threads in THREADS:
            res = results[key, threads]
            base = results["deque", threads]
            rows.append(
                [
                    labels[key],
                    str(threads),
                    summarize(res.wall_per_call).fmt(0, 1e9),
                    summarize(res.rate).fmt(0, 1e-3),
                    summarize(res.cpu_per_item).fmt(0, 1e9),
                    summarize(ratios(res.cpu_per_item, base.cpu_per_item)).fmt(2),
                    summarize(res.lag).fmt(1, 1e3),
                ]
            )
    print(
        table(
            [
                "candidate",
                "threads",
                "wall ns/call",
                "k records/s",
                "CPU ns/record",
                "CPU vs deque",
                "consumer lag (ms)",
            ],
            rows,
        )
    )
    print()
    for threads in THREADS:
        order = sorted(keys, key=lambda k: summarize(results[k, threads].cpu_per_item).median)
        ranked = ", ".join(
            f"{labels[k]} {summarize(results[k, threads].cpu_per_item).median * 1e9:.0f}"
            for k in order
        )
        print(f"- {threads} thread(s), by median CPU ns/record: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
