"""Shipilev's ``disrupting-fjp`` pi pipeline, as QuestDB's blog ran it, on ``conveyor.ring``.

The workload (``Workload.doCalculatePi``): slice ``n`` is ``work_mult`` consecutive
Leibniz terms; the sum over ``slices = slices_k * 1000`` slices is pi. One sample is the
wall time from the producer's first publish until the reclaimer has summed every slice,
on a pipeline (ring, sequences, threads) built fresh for that sample; building and
tearing it down are not timed. The ring holds the highest power of two <= ``slices``.

Variants (the producer is the main thread, as the JMH thread was):

* ``SingleThread``: a plain loop that computes every slice and sums. Under the GIL only
  one thread runs Python code at a time, so this is the floor no pipeline can beat.
* ``FanOut``: ``SPSequence -> FanOut(threads x SCSequence) -> SCSequence -> producer``
  (QuestdbFanOut). Every worker sees every event and computes only its partition
  (``slice_nr % threads``); workers, reclaimer and producer all work in batches
  (``next()``, ``available()``, one ``done(hi - 1)``).
* ``FanOut-stride``: the same graph, but a worker visits only its own slots (every
  ``threads``-th cursor, which is its partition because slice ``n`` is published at cursor
  ``n``) instead of reading every slot to test the partition. Same work, fewer reads.
* ``Worker``: ``SPSequence -> MCSequence pool of threads workers -> SCSequence ->
  producer`` (QuestdbWorker): one event per ``next()``/``done()``, every claimed event
  computed ("fixed" mode: the original tests a partition id that an MC pool makes
  meaningless, so it computes only ~1/threads of the slices and returns a wrong pi).
* ``Queue`` / ``SimpleQueue``: producer -> one ``queue.Queue``/``queue.SimpleQueue`` per
  worker (round-robin, the partition) -> one result queue -> reclaimer; one item per
  ``put``/``get``, a ``-1`` sentinel per worker at the end.
* ``FanOut-1thread`` (diagnostic, only with ``--variants``): FanOut's graph and loops
  driven by the main thread alone: the pipeline's own per-item work without threads.

Ratios to SingleThread are paired: every variant sample runs next to a SingleThread sample
and the ratio is taken within the pair.

Run ``bench/ring/pipeline.py --help``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from _stats import environment, load_note, source_state, summarize, table
from conveyor.ring import (
    AlertedError,
    BlockingWait,
    FanOut,
    MCSequence,
    RingQueue,
    SCSequence,
    SleepingWait,
    SPSequence,
    WaitStrategy,
    YieldingWait,
)

Work = Callable[[int], float]

WAITS: dict[str, Callable[[], WaitStrategy]] = {
    "blocking": BlockingWait,
    "yielding": YieldingWait,
    "sleeping": SleepingWait,
}
AUTO = "auto"


def wait_for(cfg: Config, role: str) -> WaitStrategy:
    """The wait strategy of one sequence of a ring variant.

    ``auto`` (the default) chooses per sequence by how often its upstream signals:

    * a sequence whose upstream publishes or releases in batches (the producer, the
      FanOut workers, the MC pool, a reclaimer behind FanOut workers) gets
      ``BlockingWait``: it costs no CPU while idle and its wake-ups are rare;
    * a reclaimer behind the MC pool gets ``YieldingWait``: the pool calls ``done()``
      once per item, and ``signal()`` on a polling strategy is a no-op, whereas a
      ``BlockingWait`` with a registered waiter takes its lock and notifies on every
      such ``done()`` until the woken waiter gets the GIL (see docs/benchmarks.md).

    Any other value puts that one strategy on every sequence.
    """
    if cfg.wait != AUTO:
        return WAITS[cfg.wait]()
    if role == "pool-reclaimer":
        return YieldingWait()
    return BlockingWait()


def make_work(work_mult: int) -> Work:
    """``Workload.doCalculatePi``: the sum of ``work_mult`` Leibniz terms from slice ``n``."""

    def calculate_pi(slice_nr: int) -> float:
        frm = slice_nr * work_mult
        acc = 0.0
        a = 4.0 if frm % 2 == 0 else -4.0
        b = 2 * frm + 1
        end = b + 2 * work_mult  # 2 * (frm + work_mult) + 1
        while b < end:
            acc += a / b
            a = -a
            b += 2
        return acc

    return calculate_pi


def ring_capacity(slices: int) -> int:
    """``Integer.highestOneBit(slices)``."""
    return 1 << (slices.bit_length() - 1)


class PiJob:
    """One slot: the slice to compute and, once computed, its result."""

    __slots__ = ("result", "slice_nr")

    def __init__(self) -> None:
        self.slice_nr = -1
        self.result = 0.0


@dataclass(frozen=True)
class Config:
    slices: int
    threads: int
    work_mult: int
    batch: int  # the most items a producer, worker or reclaimer handles per done()
    wait: str


class Timing(NamedTuple):
    wall: float  # seconds, first publish .. the reclaimer has summed every slice
    cpu: float  # process CPU seconds (all threads) over the same span
    pi: float


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class Sample(Protocol):
    """A built pipeline: ``run()`` is the timed part, ``close()`` the untimed teardown."""

    def run(self) -> Timing: ...

    def close(self) -> None: ...


# -- helpers shared by the ring variants ------------------------------------------------


def _view(slots: list[PiJob], lo: int, hi: int) -> list[PiJob]:
    """The slots of cursors ``[lo, hi)`` in cursor order (at most one lap, may wrap)."""
    cap = len(slots)
    start = lo & (cap - 1)
    stop = start + (hi - lo)
    if stop <= cap:
        return slots[start:stop]
    return slots[start:] + slots[: stop - cap]


def _publish(pub: SPSequence, slots: list[PiJob], slices: int, batch: int) -> None:
    """The producer: claim a batch of free slots, fill it, publish it with one done()."""
    next_blocking = pub.next_blocking
    available = pub.available
    done = pub.done
    cursor = 0
    while cursor < slices:
        cursor = next_blocking()
        hi = available()
        if hi > cursor + batch:
            hi = cursor + batch
        if hi > slices:
            hi = slices
        n = cursor
        for job in _view(slots, cursor, hi):
            job.slice_nr = n
            n += 1
        done(hi - 1)
        cursor = hi


class _Reclaimer:
    """Sums ``result`` over every slot in batches; stops after ``slices`` of them."""

    def __init__(self, seq: SCSequence, slots: list[PiJob], slices: int, batch: int) -> None:
        self.seq = seq
        self.slots = slots
        self.slices = slices
        self.batch = batch
        self.total = 0.0
        self.end = (0.0, 0.0)
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            seq, slots, slices, batch = self.seq, self.slots, self.slices, self.batch
            next_blocking = seq.next_blocking
            available = seq.available
            done = seq.done
            total = 0.0
            hi = 0
            while hi < slices:
                cursor = next_blocking()
                hi = available()
                if hi > cursor + batch:
                    hi = cursor + batch
                for job in _view(slots, cursor, hi):
                    total += job.result
                done(hi - 1)
            self.end = _clock()
            self.total = total
        except BaseException as exc:  # reported by the main thread
            self.error = exc


def _fanout_worker(
    seq: SCSequence,
    slots: list[PiJob],
    me: int,
    threads: int,
    slices: int,
    batch: int,
    work: Work,
    errors: list[BaseException],
) -> None:
    """Sees every event; computes the ones whose ``slice_nr % threads == me``."""
    try:
        next_blocking = seq.next_blocking
        available = seq.available
        done = seq.done
        hi = 0
        while hi < slices:
            cursor = next_blocking()
            hi = available()
            if hi > cursor + batch:
                hi = cursor + batch
            for job in _view(slots, cursor, hi):
                n = job.slice_nr
                if n % threads == me:
                    job.result = work(n)
            done(hi - 1)
    except BaseException as exc:
        errors.append(exc)


def _stride_worker(
    seq: SCSequence,
    slots: list[PiJob],
    me: int,
    threads: int,
    slices: int,
    batch: int,
    work: Work,
    errors: list[BaseException],
) -> None:
    """Like ``_fanout_worker`` but visits only its own partition's slots."""
    try:
        next_blocking = seq.next_blocking
        available = seq.available
        done = seq.done
        hi = 0
        while hi < slices:
            cursor = next_blocking()
            hi = available()
            if hi > cursor + batch:
                hi = cursor + batch
            for job in _view(slots, cursor, hi)[(me - cursor) % threads :: threads]:
                job.result = work(job.slice_nr)
            done(hi - 1)
    except BaseException as exc:
        errors.append(exc)


def _pool_worker(
    seq: MCSequence, slots: list[PiJob], work: Work, errors: list[BaseException]
) -> None:
    """One event per next()/done(); computes every event it claims."""
    mask = len(slots) - 1
    next_blocking = seq.next_blocking
    done = seq.done
    try:
        while True:
            cursor = next_blocking()
            job = slots[cursor & mask]
            job.result = work(job.slice_nr)
            done(cursor)
    except AlertedError:
        return
    except BaseException as exc:
        errors.append(exc)


@dataclass
class _RingSample:
    pub: SPSequence
    slots: list[PiJob]
    cfg: Config
    reclaimer: _Reclaimer
    threads: list[threading.Thread]
    errors: list[BaseException]
    waits: list[WaitStrategy] = field(default_factory=list)

    def run(self) -> Timing:
        wall, cpu = _clock()
        _publish(self.pub, self.slots, self.cfg.slices, self.cfg.batch)
        self.threads[-1].join()  # the reclaimer notes the end time itself
        if self.reclaimer.error is not None:
            raise self.reclaimer.error
        end_wall, end_cpu = self.reclaimer.end
        return Timing(end_wall - wall, end_cpu - cpu, self.reclaimer.total)

    def close(self) -> None:
        for wait in self.waits:
            wait.alert()
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


def _ring(cfg: Config) -> tuple[RingQueue[PiJob], list[PiJob]]:
    cap = ring_capacity(cfg.slices)
    ring = RingQueue(PiJob, cap)
    return ring, [ring.get(i) for i in range(cap)]  # the slots in cursor order


def build_fanout(cfg: Config, work: Work, stride: bool = False) -> Sample:
    ring, slots = _ring(cfg)
    pub = SPSequence(ring.capacity, wait_for(cfg, "producer"))
    fan = FanOut()
    reclaim = SCSequence(wait=wait_for(cfg, "reclaimer"))
    pub.then(fan).then(reclaim).then(pub)
    errors: list[BaseException] = []
    threads = []
    body = _stride_worker if stride else _fanout_worker
    for me in range(cfg.threads):
        seq = fan.add_and_get(SCSequence(wait=wait_for(cfg, "worker")))
        args = (seq, slots, me, cfg.threads, cfg.slices, cfg.batch, work, errors)
        threads.append(threading.Thread(target=body, args=args, daemon=True))
    reclaimer = _Reclaimer(reclaim, slots, cfg.slices, cfg.batch)
    threads.append(threading.Thread(target=reclaimer, daemon=True))
    for thread in threads:
        thread.start()
    return _RingSample(pub, slots, cfg, reclaimer, threads, errors)


@dataclass
class _InlineSample:
    """The FanOut graph driven by one thread: publish a batch, let each worker take it
    in turn, reclaim it. No thread, no GIL hand-off: what is left over SingleThread is
    the pipeline's own work per item (slot writes and reads, partition tests)."""

    cfg: Config
    work: Work
    pub: SPSequence
    workers: list[SCSequence]
    reclaim: SCSequence
    slots: list[PiJob]

    def run(self) -> Timing:
        slots, work, slices, batch = self.slots, self.work, self.cfg.slices, self.cfg.batch
        threads = self.cfg.threads
        pub, reclaim = self.pub, self.reclaim
        wall, cpu = _clock()
        total = 0.0
        hi = 0
        while hi < slices:
            cursor = pub.next()  # never -1: each batch is reclaimed before the next
            hi = min(pub.available(), cursor + batch, slices)
            n = cursor
            for job in _view(slots, cursor, hi):
                job.slice_nr = n
                n += 1
            pub.done(hi - 1)
            for me, seq in enumerate(self.workers):
                lo = seq.next()
                for job in _view(slots, lo, seq.available()):
                    n = job.slice_nr
                    if n % threads == me:
                        job.result = work(n)
                seq.done(seq.available() - 1)
            lo = reclaim.next()
            for job in _view(slots, lo, reclaim.available()):
                total += job.result
            reclaim.done(reclaim.available() - 1)
        end_wall, end_cpu = _clock()
        return Timing(end_wall - wall, end_cpu - cpu, total)

    def close(self) -> None:
        pass


def build_inline(cfg: Config, work: Work) -> Sample:
    ring, slots = _ring(cfg)
    pub = SPSequence(ring.capacity)
    fan = FanOut()
    reclaim = SCSequence()
    pub.then(fan).then(reclaim).then(pub)
    workers = [fan.add_and_get(SCSequence()) for _ in range(cfg.threads)]
    return _InlineSample(cfg, work, pub, workers, reclaim, slots)


def build_worker(cfg: Config, work: Work) -> Sample:
    ring, slots = _ring(cfg)
    pub = SPSequence(ring.capacity, wait_for(cfg, "producer"))
    pool_wait = wait_for(cfg, "pool")
    pool = MCSequence(ring.capacity, wait=pool_wait)
    reclaim = SCSequence(wait=wait_for(cfg, "pool-reclaimer"))
    pub.then(pool).then(reclaim).then(pub)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_pool_worker, args=(pool, slots, work, errors), daemon=True)
        for _ in range(cfg.threads)
    ]
    reclaimer = _Reclaimer(reclaim, slots, cfg.slices, cfg.batch)
    threads.append(threading.Thread(target=reclaimer, daemon=True))
    for thread in threads:
        thread.start()
    return _RingSample(pub, slots, cfg, reclaimer, threads, errors, [pool_wait])


# -- the queue variants -------------------------------------------------------------------


class _AnyQueue(Protocol):
    def put(self, item: float, /) -> None: ...
    def get(self) -> float: ...


@dataclass
class _QueueSample:
    cfg: Config
    inboxes: list[_AnyQueue]
    threads: list[threading.Thread]
    reclaimer: _QueueReclaimer
    errors: list[BaseException]

    def run(self) -> Timing:
        slices, n = self.cfg.slices, self.cfg.threads
        puts = [q.put for q in self.inboxes]
        wall, cpu = _clock()
        for i in range(slices):
            puts[i % n](i)
        for put in puts:
            put(-1)
        self.threads[-1].join()
        if self.reclaimer.error is not None:
            raise self.reclaimer.error
        end_wall, end_cpu = self.reclaimer.end
        return Timing(end_wall - wall, end_cpu - cpu, self.reclaimer.total)

    def close(self) -> None:
        for thread in self.threads:
            thread.join()
        if self.errors:
            raise self.errors[0]


class _QueueReclaimer:
    def __init__(self, results: _AnyQueue, slices: int) -> None:
        self.results = results
        self.slices = slices
        self.total = 0.0
        self.end = (0.0, 0.0)
        self.error: BaseException | None = None

    def __call__(self) -> None:
        try:
            get = self.results.get
            total = 0.0
            for _ in range(self.slices):
                total += get()
            self.end = _clock()
            self.total = total
        except BaseException as exc:
            self.error = exc


def _queue_worker(
    inbox: _AnyQueue, results: _AnyQueue, work: Work, errors: list[BaseException]
) -> None:
    get = inbox.get
    put = results.put
    try:
        while True:
            n = int(get())
            if n < 0:
                return
            put(work(n))
    except BaseException as exc:
        errors.append(exc)


def build_queue(cfg: Config, work: Work, simple: bool) -> Sample:
    cap = ring_capacity(cfg.slices)
    inboxes: list[_AnyQueue]
    results: _AnyQueue
    if simple:  # unbounded: SimpleQueue has no maxsize
        inboxes = [queue.SimpleQueue() for _ in range(cfg.threads)]
        results = queue.SimpleQueue()
    else:  # bounded like the ring: the inboxes share its capacity
        inboxes = [queue.Queue(max(1, cap // cfg.threads)) for _ in range(cfg.threads)]
        results = queue.Queue(cap)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_queue_worker, args=(q, results, work, errors), daemon=True)
        for q in inboxes
    ]
    reclaimer = _QueueReclaimer(results, cfg.slices)
    threads.append(threading.Thread(target=reclaimer, daemon=True))
    for thread in threads:
        thread.start()
    return _QueueSample(cfg, inboxes, threads, reclaimer, errors)


# -- the baseline -------------------------------------------------------------------------


@dataclass
class _SingleSample:
    cfg: Config
    work: Work

    def run(self) -> Timing:
        work = self.work
        wall, cpu = _clock()
        total = 0.0
        for i in range(self.cfg.slices):
            total += work(i)
        end_wall, end_cpu = _clock()
        return Timing(end_wall - wall, end_cpu - cpu, total)

    def close(self) -> None:
        pass


def build_single(cfg: Config, work: Work) -> Sample:
    return _SingleSample(cfg, work)


# -- driver -------------------------------------------------------------------------------

Builder = Callable[[Config, Work], Sample]
Key = tuple[int, int, str]  # (slices_k, threads, variant)
BASELINE = "SingleThread"
INLINE = "FanOut-1thread"


def variants(waits: list[str]) -> dict[str, tuple[Builder, str | None]]:
    """name -> (builder, wait strategy or None); ring variants once per strategy."""
    out: dict[str, tuple[Builder, str | None]] = {BASELINE: (build_single, None)}
    for wait in waits:
        tag = "" if len(waits) == 1 else f"[{wait}]"
        out[f"FanOut{tag}"] = (build_fanout, wait)
        out[f"FanOut-stride{tag}"] = (lambda c, w: build_fanout(c, w, stride=True), wait)
        out[f"Worker{tag}"] = (build_worker, wait)
    out[INLINE] = (build_inline, None)  # diagnostic: only when asked for by --variants
    out["Queue"] = (lambda c, w: build_queue(c, w, simple=False), None)
    out["SimpleQueue"] = (lambda c, w: build_queue(c, w, simple=True), None)
    return out


def sample(builder: Builder, cfg: Config, work: Work) -> Timing:
    gc.collect()
    pipeline = builder(cfg, work)
    try:
        return pipeline.run()
    finally:
        pipeline.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices-k", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--work-mult", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5, help="rounds (samples per variant)")
    parser.add_argument("--batch", type=int, default=4096, help="max items per done()")
    parser.add_argument(
        "--wait",
        nargs="+",
        choices=[AUTO, *sorted(WAITS)],
        default=[AUTO],
        help="auto: chosen per sequence (see wait_for); or one strategy for every "
        "ring sequence; several values = compare them",
    )
    parser.add_argument("--variants", nargs="+", help="only these variants (and the baseline)")
    parser.add_argument("--quick", action="store_true", help="slicesK=500 only, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices_k = [500]
        args.repeat = min(args.repeat, 3)

    work = make_work(args.work_mult)
    table_of = variants(args.wait)
    if args.variants:  # "FanOut" selects FanOut[...] for every --wait too

        def wanted(name: str) -> bool:
            return any(name == v or name.startswith(v + "[") for v in args.variants)

        unknown = [v for v in args.variants if not any(wanted(n) for n in table_of)]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {sorted(table_of)}")
        table_of = {k: v for k, v in table_of.items() if k == BASELINE or wanted(k)}
    else:
        del table_of[INLINE]
    names = list(table_of)
    groups = [(k, t) for k in args.slices_k for t in args.threads]

    load0 = os.getloadavg()[0]
    print(environment())
    print(f"# code: {source_state('src/conveyor/ring')}")
    print(
        f"# pipeline: work_mult={args.work_mult} batch={args.batch} wait={args.wait} "
        f"repeat={args.repeat} groups={groups}"
    )
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")

    # warm-up: every variant once, small, untimed (imports, allocator, first-call paths)
    for name in names:
        builder, wait = table_of[name]
        sample(builder, Config(20_000, 2, args.work_mult, args.batch, wait or AUTO), work)

    walls: dict[Key, list[float]] = {}
    cpus: dict[Key, list[float]] = {}
    pis: dict[Key, list[float]] = {}
    wall_ratio: dict[Key, list[float]] = {}  # per pair: variant / the baseline next to it
    cpu_ratio: dict[Key, list[float]] = {}

    def measure(key: Key) -> Timing:
        builder, wait = table_of[key[2]]
        cfg = Config(key[0] * 1000, key[1], args.work_mult, args.batch, wait or AUTO)
        t = sample(builder, cfg, work)
        walls.setdefault(key, []).append(t.wall)
        cpus.setdefault(key, []).append(t.cpu)
        pis.setdefault(key, []).append(t.pi)
        return t

    others = [name for name in names if name != BASELINE]
    for rnd in range(args.repeat):
        for slices_k, threads in groups:
            # Paired design: every variant sample runs right next to a SingleThread sample
            # (before it in one pair, after it in the next) and the ratio is taken within
            # the pair, so that load which changes over seconds hits both alike. The order
            # of the variants is rotated each round.
            order = others[rnd % len(others) :] + others[: rnd % len(others)]
            line = []
            for j, name in enumerate(order):
                base_key = (slices_k, threads, BASELINE)
                key = (slices_k, threads, name)
                if (j + rnd) % 2 == 0:
                    b = measure(base_key)
                    t = measure(key)
                else:
                    t = measure(key)
                    b = measure(base_key)
                wall_ratio.setdefault(key, []).append(t.wall / b.wall)
                cpu_ratio.setdefault(key, []).append(t.cpu / b.cpu)
                line.append(f"{name}={t.wall * 1000:.0f}/{b.wall * 1000:.0f}")
            print(
                f"round {rnd + 1} slicesK={slices_k} threads={threads} (variant/single ms): "
                + " ".join(line)
            )
            sys.stdout.flush()

    rows = []
    failures = []
    for slices_k, threads in groups:
        base_pi = pis[(slices_k, threads, BASELINE)][0]
        for name in names:
            key = (slices_k, threads, name)
            pi = pis[key][-1]
            worst = max(abs(p - base_pi) for p in pis[key])
            if not (abs(pi - math.pi) < 1e-5 and worst < 1e-9):
                failures.append(f"{name} slicesK={slices_k} threads={threads}: pi={pi!r}")
            rows.append(
                [
                    str(slices_k),
                    str(threads),
                    name,
                    summarize(walls[key]).fmt(0, 1000),
                    summarize(wall_ratio.get(key, [1.0])).fmt(3),
                    summarize(cpus[key]).fmt(0, 1000),
                    summarize(cpu_ratio.get(key, [1.0])).fmt(3),
                    f"{pi:.12f}",
                    f"{worst:.0e}",
                ]
            )
    print()
    print(
        "median [min-max] over the samples; x single = variant / the SingleThread sample run "
        "next to it (one pair per round); cpu = process CPU time (all threads) over the timed span"
    )
    headers = ["slicesK", "threads", "variant", "wall ms", "x single", "cpu ms", "x single"]
    print(table([*headers, "pi", "max |pi - single|"], rows, "rrlrrrrrr"))
    print(load_note(load0))
    for name in names:
        key = (500, 2, name)
        if not name.startswith("FanOut") or key not in walls:
            continue
        r = summarize(wall_ratio[key])
        verdict = "MET" if r.median <= 1.15 else "NOT MET"
        print(
            f"target: {name} <= 1.15 x SingleThread at slicesK=500 threads=2: median "
            f"{r.fmt(3)} (IQR {r.q1:.3f}-{r.q3:.3f}) -> {verdict}"
        )
    if failures:
        print("\nWRONG RESULTS:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
