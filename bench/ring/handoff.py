"""Raw hand-off between threads: ``conveyor.ring`` next to ``queue.Queue``,
``queue.SimpleQueue`` and ``collections.deque``.

Two measurements, each over three topologies (SPSC; MPSC with 2 producers; SPMC with
2 consumers, where the ring offers both a work-sharing ``MCSequence`` pool and a
``FanOut`` multicast in which every consumer sees every item):

* throughput: ``--items`` small ints from the producer(s) to the consumer(s) as fast as
  they go; items/s = items published / (go .. the last consumer done; with FanOut each
  item is delivered to both consumers). The ring is bounded
  (``--capacity`` slots), ``queue.Queue`` gets the same ``maxsize``; ``SimpleQueue`` and
  ``deque`` are unbounded (they have no blocking bound), so their producers may run ahead.
* latency: each producer writes ``time.perf_counter_ns()`` into the slot (or puts it)
  and then sleeps ``--pace`` seconds (which releases the GIL), so the consumer is idle
  when the item arrives: what is measured is the hand-off and the consumer's wake-up,
  not queueing. The consumer takes ``perf_counter_ns()`` as soon as it holds the item.

Idle behaviour: ``Queue``/``SimpleQueue`` consumers block in ``get()``; a ``deque``
consumer polls and calls ``os.sched_yield()`` (which releases the GIL) when the deque is
empty, never a pure spin; for throughput with a known count it drains ``len(d)`` items per
look (its best loop, as the ring's consumers take whole batches), elsewhere it pops one
item at a time and tests for the STOP item. Ring sequences wait with their ``WaitStrategy``:
for throughput ``auto`` picks ``BlockingWait`` where the upstream publishes in batches
and ``YieldingWait`` where it calls ``done()`` per item (see ``pick``; "ring per-item
[blocking]" shows why); latency is measured with both. Variants are interleaved within
every round, in an order rotated each round.
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
from _stats import (
    environment,
    load_note,
    percentile,
    ratios,
    source_state,
    summarize,
    table,
)
from conveyor.ring import (
    AlertedError,
    BlockingWait,
    FanOut,
    MCSequence,
    MPSequence,
    RingQueue,
    SCSequence,
    SleepingWait,
    SPSequence,
    WaitStrategy,
    YieldingWait,
)

_now = time.perf_counter_ns
_sched_yield: Callable[[], None] = getattr(os, "sched_yield", lambda: time.sleep(0))

WAITS: dict[str, Callable[[], WaitStrategy]] = {
    "blocking": BlockingWait,
    "yielding": YieldingWait,
    "sleeping": SleepingWait,
}
STOP = -1  # poison pill for consumers that share the items (MC pool, queues, deque)


class Msg:
    """One ring slot: an int (a sequence number, or a timestamp in ns)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


@dataclass(frozen=True)
class Params:
    mode: str  # "tput" or "lat"
    items: int  # tput: items in total; lat: items per producer
    capacity: int
    batch: int
    pace: float
    wait: str  # "auto" or a key of WAITS


def pick(p: Params, per_item_upstream: bool) -> WaitStrategy:
    """``auto``: poll where the upstream signals once per item (``signal()`` is free on
    a polling strategy, whereas a ``BlockingWait`` with a woken-but-not-yet-running
    waiter takes its lock and notifies on every such ``done()``), block otherwise."""
    if p.wait != "auto":
        return WAITS[p.wait]()
    return YieldingWait() if per_item_upstream else BlockingWait()


@dataclass
class Result:
    """What one consumer reports."""

    end: float = 0.0
    count: int = 0
    total: int = 0
    latencies: list[int] = field(default_factory=list)


@dataclass
class Harness:
    """Producers wait for ``go``; consumers run from the start and fill ``results``."""

    producers: list[Callable[[], None]]
    consumers: list[Callable[[Result], None]]
    expect_count: int  # deliveries: items all consumers together must see
    expect_total: int | None  # their sum (throughput mode)
    published: int = 0  # items published (0: the same as expect_count)


def _view(slots: list[Msg], lo: int, hi: int) -> list[Msg]:
    cap = len(slots)
    start = lo & (cap - 1)
    stop = start + (hi - lo)
    if stop <= cap:
        return slots[start:stop]
    return slots[start:] + slots[: stop - cap]


def _slots(capacity: int) -> list[Msg]:
    ring = RingQueue(Msg, capacity)
    return [ring.get(i) for i in range(capacity)]  # the slots in cursor order (setup)


# -- ring producers ---------------------------------------------------------------------


def sp_batched(pub: SPSequence, slots: list[Msg], lo: int, hi: int, batch: int) -> None:
    """Publish values ``lo..hi-1`` in batches: one ``done()`` per batch."""
    next_blocking, available, done = pub.next_blocking, pub.available, pub.done
    value = lo
    while value < hi:
        cursor = next_blocking()
        end = available()
        if end > cursor + batch:
            end = cursor + batch
        if end - cursor > hi - value:
            end = cursor + hi - value
        for msg in _view(slots, cursor, end):
            msg.value = value
            value += 1
        done(end - 1)


def sp_per_item(pub: SPSequence | MPSequence, slots: list[Msg], lo: int, hi: int) -> None:
    """Publish values ``lo..hi-1``: ``next_blocking()`` and ``done()`` per item (the only
    way for an ``MPSequence``)."""
    mask = len(slots) - 1
    next_blocking, done = pub.next_blocking, pub.done
    for value in range(lo, hi):
        cursor = next_blocking()
        slots[cursor & mask].value = value
        done(cursor)


def ring_paced(pub: SPSequence | MPSequence, slots: list[Msg], n: int, pace: float) -> None:
    """Latency mode: publish ``n`` timestamps, sleeping ``pace`` after each."""
    mask = len(slots) - 1
    next_blocking, done, sleep = pub.next_blocking, pub.done, time.sleep
    for _ in range(n):
        cursor = next_blocking()
        slots[cursor & mask].value = _now()
        done(cursor)
        sleep(pace)


# -- ring consumers ---------------------------------------------------------------------


def sc_batched(seq: SCSequence, slots: list[Msg], n: int, batch: int, res: Result) -> None:
    next_blocking, available, done = seq.next_blocking, seq.available, seq.done
    total = 0
    seen = 0
    while seen < n:
        cursor = next_blocking()
        end = available()
        if end > cursor + batch:
            end = cursor + batch
        for msg in _view(slots, cursor, end):
            total += msg.value
        done(end - 1)
        seen += end - cursor
    res.end = time.perf_counter()
    res.count, res.total = seen, total


def sc_per_item(seq: SCSequence, slots: list[Msg], n: int, res: Result) -> None:
    mask = len(slots) - 1
    next_blocking, done = seq.next_blocking, seq.done
    total = 0
    for _ in range(n):
        cursor = next_blocking()
        total += slots[cursor & mask].value
        done(cursor)
    res.end = time.perf_counter()
    res.count, res.total = n, total


def sc_latency(seq: SCSequence, slots: list[Msg], n: int, res: Result) -> None:
    mask = len(slots) - 1
    next_blocking, done = seq.next_blocking, seq.done
    lat = res.latencies
    for _ in range(n):
        cursor = next_blocking()
        lat.append(_now() - slots[cursor & mask].value)
        done(cursor)
    res.end = time.perf_counter()
    res.count = n


def mc_consumer(seq: MCSequence, slots: list[Msg], latency: bool, res: Result) -> None:
    """One of a pool: claim one item per ``next()``, until a STOP item."""
    mask = len(slots) - 1
    next_blocking, done = seq.next_blocking, seq.done
    total = count = 0
    lat = res.latencies
    while True:
        cursor = next_blocking()
        value = slots[cursor & mask].value
        if latency and value != STOP:
            lat.append(_now() - value)
        done(cursor)
        if value == STOP:
            break
        total += value
        count += 1
    res.end = time.perf_counter()
    res.count, res.total = count, total


# -- ring harnesses -----------------------------------------------------------------------


def ring_spsc(p: Params, batched: bool) -> Harness:
    slots = _slots(p.capacity)
    # the producer waits on the consumer's done(), the consumer on the producer's
    pub = SPSequence(p.capacity, pick(p, per_item_upstream=not batched))
    sub = SCSequence(wait=pick(p, per_item_upstream=not batched))
    pub.then(sub).then(pub)
    if p.mode == "lat":
        return Harness(
            [lambda: ring_paced(pub, slots, p.items, p.pace)],
            [lambda r: sc_latency(sub, slots, p.items, r)],
            p.items,
            None,
        )
    n = p.items
    producer: Callable[[], None]
    consumer: Callable[[Result], None]
    if batched:
        producer = partial(sp_batched, pub, slots, 0, n, p.batch)
        consumer = partial(sc_batched, sub, slots, n, p.batch)
    else:
        producer = partial(sp_per_item, pub, slots, 0, n)
        consumer = partial(sc_per_item, sub, slots, n)
    return Harness([producer], [consumer], n, n * (n - 1) // 2)


def ring_mpsc(p: Params, producers: int = 2) -> Harness:
    slots = _slots(p.capacity)
    pub = MPSequence(p.capacity, pick(p, per_item_upstream=False))  # consumer batches
    sub = SCSequence(wait=pick(p, per_item_upstream=True))  # producers done() per item
    pub.then(sub).then(pub)
    if p.mode == "lat":
        return Harness(
            [lambda: ring_paced(pub, slots, p.items, p.pace) for _ in range(producers)],
            [lambda r: sc_latency(sub, slots, p.items * producers, r)],
            p.items * producers,
            None,
        )
    n = p.items
    share = n // producers
    bounds = [(k * share, n if k == producers - 1 else (k + 1) * share) for k in range(producers)]
    return Harness(
        [partial(sp_per_item, pub, slots, lo, hi) for lo, hi in bounds],
        [lambda r: sc_batched(sub, slots, n, p.batch, r)],
        n,
        n * (n - 1) // 2,
    )


def ring_spmc(p: Params, consumers: int = 2) -> Harness:
    """SP (batched) -> MCSequence pool (one item per next()/done()) -> SP."""
    slots = _slots(p.capacity)
    pub = SPSequence(p.capacity, pick(p, per_item_upstream=True))  # pool done() per item
    pool_wait = pick(p, per_item_upstream=False)
    pool = MCSequence(p.capacity, wait=pool_wait)
    pub.then(pool).then(pub)
    latency = p.mode == "lat"
    consumer = partial(mc_consumer, pool, slots, latency)

    def stops() -> None:  # one STOP per consumer, after everything else
        for _ in range(consumers):
            cursor = pub.next_blocking()
            slots[cursor & (len(slots) - 1)].value = STOP
            pub.done(cursor)

    if latency:

        def producer() -> None:
            ring_paced(pub, slots, p.items, p.pace)
            stops()

        return Harness([producer], [consumer] * consumers, p.items, None)
    n = p.items

    def fast_producer() -> None:
        sp_batched(pub, slots, 0, n, p.batch)
        stops()

    return Harness([fast_producer], [consumer] * consumers, n, n * (n - 1) // 2)


def ring_fanout(p: Params, consumers: int = 2) -> Harness:
    """SP -> FanOut(consumers x SC) -> SP: every consumer sees every item."""
    slots = _slots(p.capacity)
    pub = SPSequence(p.capacity, pick(p, per_item_upstream=False))
    fan = FanOut()
    pub.then(fan).then(pub)
    subs = [fan.add_and_get(SCSequence(wait=pick(p, False))) for _ in range(consumers)]
    if p.mode == "lat":
        return Harness(
            [lambda: ring_paced(pub, slots, p.items, p.pace)],
            [partial(sc_latency, sub, slots, p.items) for sub in subs],
            p.items * consumers,
            None,
            published=p.items,
        )
    n = p.items
    return Harness(
        [lambda: sp_batched(pub, slots, 0, n, p.batch)],
        [partial(sc_batched, sub, slots, n, p.batch) for sub in subs],
        n * consumers,
        n * (n - 1) // 2 * consumers,
        published=n,
    )


# -- queue.Queue / queue.SimpleQueue ------------------------------------------------------


def _queue(p: Params, simple: bool) -> queue.Queue[int] | queue.SimpleQueue[int]:
    return queue.SimpleQueue() if simple else queue.Queue(p.capacity)


def q_producer(q: queue.Queue[int] | queue.SimpleQueue[int], lo: int, hi: int) -> None:
    put = q.put
    for value in range(lo, hi):
        put(value)


def q_paced(q: queue.Queue[int] | queue.SimpleQueue[int], n: int, pace: float) -> None:
    put, sleep = q.put, time.sleep
    for _ in range(n):
        put(_now())
        sleep(pace)


def q_consumer(
    q: queue.Queue[int] | queue.SimpleQueue[int], n: int | None, latency: bool, res: Result
) -> None:
    """Take ``n`` items, or (``n`` None) items until a STOP."""
    get = q.get
    total = count = 0
    lat = res.latencies
    if n is not None and not latency:  # throughput with a known count: the lean loop
        for _ in range(n):
            total += get()
        res.end = time.perf_counter()
        res.count, res.total = n, total
        return
    while n is None or count < n:
        value = get()
        if value == STOP:
            break
        if latency:
            lat.append(_now() - value)
        else:
            total += value
        count += 1
    res.end = time.perf_counter()
    res.count, res.total = count, total


def queue_harness(p: Params, topology: str, simple: bool) -> Harness:
    q = _queue(p, simple)
    latency = p.mode == "lat"
    n = p.items
    if topology == "SPSC":
        producers: list[Callable[[], None]] = [
            (lambda: q_paced(q, n, p.pace)) if latency else (lambda: q_producer(q, 0, n))
        ]
        consumers: list[Callable[[Result], None]] = [lambda r: q_consumer(q, n, latency, r)]
        return Harness(producers, consumers, n, None if latency else n * (n - 1) // 2)
    if topology == "MPSC":
        if latency:
            producers = [lambda: q_paced(q, n, p.pace)] * 2
            return Harness(producers, [lambda r: q_consumer(q, 2 * n, True, r)], 2 * n, None)
        half = n // 2
        producers = [lambda: q_producer(q, 0, half), lambda: q_producer(q, half, n)]
        return Harness(producers, [lambda r: q_consumer(q, n, False, r)], n, n * (n - 1) // 2)
    # SPMC: two consumers share the items; a STOP each at the end

    def producer() -> None:
        if latency:
            q_paced(q, n, p.pace)
        else:
            q_producer(q, 0, n)
        q.put(STOP)
        q.put(STOP)

    consumer = partial(q_consumer, q, None, latency)
    return Harness([producer], [consumer] * 2, n, None if latency else n * (n - 1) // 2)


# -- collections.deque --------------------------------------------------------------------


def d_producer(d: deque[int], lo: int, hi: int) -> None:
    append = d.append
    for value in range(lo, hi):
        append(value)


def d_paced(d: deque[int], n: int, pace: float) -> None:
    append, sleep = d.append, time.sleep
    for _ in range(n):
        append(_now())
        sleep(pace)


def d_consumer(d: deque[int], n: int | None, latency: bool, res: Result) -> None:
    """Poll ``popleft()``; when empty, ``os.sched_yield()`` (releases the GIL)."""
    popleft = d.popleft
    total = count = 0
    lat = res.latencies
    if n is not None and not latency:
        # throughput with a known count: drain what is there, yield when it is empty
        while count < n:
            ready = len(d)
            if not ready:
                _sched_yield()
                continue
            for _ in range(ready):
                total += popleft()
            count += ready
        res.end = time.perf_counter()
        res.count, res.total = count, total
        return
    while n is None or count < n:
        try:
            value = popleft()
        except IndexError:
            _sched_yield()
            continue
        if value == STOP:
            break
        if latency:
            lat.append(_now() - value)
        else:
            total += value
        count += 1
    res.end = time.perf_counter()
    res.count, res.total = count, total


def deque_harness(p: Params, topology: str) -> Harness:
    d: deque[int] = deque()
    latency = p.mode == "lat"
    n = p.items
    if topology == "SPSC":
        producers: list[Callable[[], None]] = [
            (lambda: d_paced(d, n, p.pace)) if latency else (lambda: d_producer(d, 0, n))
        ]
        consumers: list[Callable[[Result], None]] = [lambda r: d_consumer(d, n, latency, r)]
        return Harness(producers, consumers, n, None if latency else n * (n - 1) // 2)
    if topology == "MPSC":
        if latency:
            producers = [lambda: d_paced(d, n, p.pace)] * 2
            return Harness(producers, [lambda r: d_consumer(d, 2 * n, True, r)], 2 * n, None)
        half = n // 2
        producers = [lambda: d_producer(d, 0, half), lambda: d_producer(d, half, n)]
        return Harness(producers, [lambda r: d_consumer(d, n, False, r)], n, n * (n - 1) // 2)

    def producer() -> None:
        if latency:
            d_paced(d, n, p.pace)
        else:
            d_producer(d, 0, n)
        d.append(STOP)
        d.append(STOP)

    consumer = partial(d_consumer, d, None, latency)
    return Harness([producer], [consumer] * 2, n, None if latency else n * (n - 1) // 2)


# -- running --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    topology: str
    name: str
    build: Callable[[Params], Harness]
    modes: tuple[str, ...] = ("tput", "lat")
    wait: str = "auto"  # the ring sequences' wait strategy (see pick)


def _variants() -> list[Variant]:
    out = [
        Variant("SPSC", "ring batched", lambda p: ring_spsc(p, batched=True), ("tput",)),
        Variant("SPSC", "ring per-item", lambda p: ring_spsc(p, batched=False), ("tput",)),
        Variant(
            "SPSC",
            "ring per-item [blocking]",
            lambda p: ring_spsc(p, batched=False),
            ("tput",),
            "blocking",
        ),
    ]
    for wait in ("yielding", "blocking"):
        out.append(Variant("SPSC", f"ring [{wait}]", lambda p: ring_spsc(p, True), ("lat",), wait))
    out += [
        Variant("SPSC", "Queue", lambda p: queue_harness(p, "SPSC", simple=False)),
        Variant("SPSC", "SimpleQueue", lambda p: queue_harness(p, "SPSC", simple=True)),
        Variant("SPSC", "deque", lambda p: deque_harness(p, "SPSC")),
        Variant("MPSC", "ring MP->SC", ring_mpsc, ("tput",)),
    ]
    for wait in ("yielding", "blocking"):
        out.append(Variant("MPSC", f"ring MP->SC [{wait}]", ring_mpsc, ("lat",), wait))
    out += [
        Variant("MPSC", "Queue", lambda p: queue_harness(p, "MPSC", simple=False)),
        Variant("MPSC", "SimpleQueue", lambda p: queue_harness(p, "MPSC", simple=True)),
        Variant("MPSC", "deque", lambda p: deque_harness(p, "MPSC")),
        Variant("SPMC", "ring SP->MC pool", ring_spmc, ("tput",)),
        Variant("SPMC", "ring FanOut (multicast)", ring_fanout, ("tput",)),
    ]
    for wait in ("yielding", "blocking"):
        out.append(Variant("SPMC", f"ring SP->MC pool [{wait}]", ring_spmc, ("lat",), wait))
        out.append(Variant("SPMC", f"ring FanOut [{wait}]", ring_fanout, ("lat",), wait))
    out += [
        Variant("SPMC", "Queue", lambda p: queue_harness(p, "SPMC", simple=False)),
        Variant("SPMC", "SimpleQueue", lambda p: queue_harness(p, "SPMC", simple=True)),
        Variant("SPMC", "deque", lambda p: deque_harness(p, "SPMC")),
    ]
    return out


VARIANTS = _variants()


def run(h: Harness) -> tuple[float, list[Result]]:
    """Start consumers, then producers (waiting on a go signal); time go .. last consumer."""
    go = threading.Event()
    results = [Result() for _ in h.consumers]
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                fn()
            except AlertedError:
                pass
            except BaseException as exc:
                errors.append(exc)

        return body

    def start_after_go(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            go.wait()
            fn()

        return body

    consumers = [
        threading.Thread(target=guard(partial(consumer, res)), daemon=True)
        for consumer, res in zip(h.consumers, results, strict=True)
    ]
    producers = [
        threading.Thread(target=guard(start_after_go(prod)), daemon=True) for prod in h.producers
    ]
    for thread in consumers + producers:
        thread.start()
    time.sleep(0.005)  # let every thread reach its wait
    gc.collect()
    start = time.perf_counter()
    go.set()
    for thread in producers + consumers:
        thread.join(timeout=120)
        if thread.is_alive():
            raise RuntimeError("a hand-off thread did not finish within 120 s")
    if errors:
        raise errors[0]
    return max(r.end for r in results) - start, results


def check(v: Variant, h: Harness, results: list[Result]) -> None:
    count = sum(r.count for r in results)
    if count != h.expect_count:
        raise AssertionError(f"{v.topology} {v.name}: saw {count} items, not {h.expect_count}")
    if h.expect_total is not None:
        total = sum(r.total for r in results)
        if total != h.expect_total:
            raise AssertionError(f"{v.topology} {v.name}: checksum {total} != {h.expect_total}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000, help="throughput: items")
    parser.add_argument("--lat-items", type=int, default=2_000, help="latency: per producer")
    parser.add_argument("--pace", type=float, default=50e-6, help="latency: sleep per item, s")
    parser.add_argument("--capacity", type=int, default=4096, help="ring slots, Queue maxsize")
    parser.add_argument("--batch", type=int, default=1024, help="ring: max items per done()")
    parser.add_argument("--repeat", type=int, default=7, help="rounds")
    parser.add_argument("--only", choices=["tput", "lat"], help="run one measurement only")
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds")
    add_publish_option(parser, "yes, except with --quick or --only")
    args = parser.parse_args(argv)
    if args.only and args.publish is None:
        args.publish = False  # half a run would leave the other half's chart stale
    if args.quick:
        args.items, args.lat_items, args.repeat = 50_000, 500, min(args.repeat, 3)
    modes = [args.only] if args.only else ["tput", "lat"]

    load0 = os.getloadavg()[0]
    print(environment())
    print(f"# code: {source_state('src/conveyor/ring')}")
    sizes = (
        f"items={args.items} lat_items={args.lat_items} pace={args.pace * 1e6:g}us "
        f"capacity={args.capacity} batch={args.batch} repeat={args.repeat}"
    )
    print(f"# handoff: {sizes}")
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")

    jobs = [(mode, v) for mode in modes for v in VARIANTS if mode in v.modes]
    rate: dict[tuple[str, str], list[float]] = {}
    p50: dict[tuple[str, str], list[float]] = {}
    p99: dict[tuple[str, str], list[float]] = {}

    def params(mode: str, v: Variant, warm: bool = False) -> Params:
        items = args.items if mode == "tput" else args.lat_items
        if warm:
            items = max(100, items // 20)
        return Params(mode, items, args.capacity, args.batch, args.pace, v.wait)

    for mode, v in jobs:  # warm-up, untimed
        h = v.build(params(mode, v, warm=True))
        check(v, h, run(h)[1])

    for rnd in range(args.repeat):
        order = jobs[rnd % len(jobs) :] + jobs[: rnd % len(jobs)]
        for mode, v in order:
            h = v.build(params(mode, v))
            seconds, results = run(h)
            check(v, h, results)
            key = (v.topology, v.name)
            if mode == "tput":
                rate.setdefault(key, []).append((h.published or h.expect_count) / seconds)
            else:
                lat = sorted(x for r in results for x in r.latencies)
                p50.setdefault(key, []).append(percentile(lat, 0.50) / 1000)
                p99.setdefault(key, []).append(percentile(lat, 0.99) / 1000)
        print(f"round {rnd + 1}/{args.repeat} done")
        sys.stdout.flush()

    with capture() as printed:
        report(modes, rate, p50, p99, args.pace)
    print(load_note(load0))
    if wants_publish(args):
        publish(
            "ring-handoff",
            "bench/ring/handoff.py",
            sys.argv[1:] if argv is None else argv,
            load0,
            charts(modes, rate, p50, p99, args.items, args.pace),
            printed.getvalue(),
            params=sizes,
            code=("src/conveyor/ring",),
        )
    return 0


Samples = dict[tuple[str, str], list[float]]
TOPOLOGIES = ("SPSC", "MPSC", "SPMC")


def _role(variant: str) -> Role:
    return "conveyor" if variant.startswith("ring") else "peer"


def charts(
    modes: list[str], rate: Samples, p50: Samples, p99: Samples, items: int, pace: float
) -> list[Figure]:
    """Throughput per topology; latency p50 and p99 per topology."""
    out = []
    if "tput" in modes:
        panels = []
        for topology in TOPOLOGIES:
            bars = [
                Bar(
                    v.name,
                    [r / 1e6 for r in rate[key]],
                    _role(v.name),
                    "(every item to both consumers)" if "FanOut" in v.name else "",
                )
                for v in VARIANTS
                if v.topology == topology and (key := (v.topology, v.name)) in rate
            ]
            panels.append(Panel(topology, "million items/s", bars, better="higher"))
        out.append(
            Figure(
                "ring-handoff",
                f"Hand-off between threads: conveyor.ring against the standard library "
                f"({items:,} items per sample)",
                panels,
            )
        )
    if "lat" in modes:
        panels = []
        for topology in TOPOLOGIES:
            for name, samples in (("p50", p50), ("p99", p99)):
                bars = [
                    Bar(v.name, samples[key], _role(v.name))
                    for v in VARIANTS
                    if v.topology == topology and (key := (v.topology, v.name)) in samples
                ]
                panels.append(Panel(f"{topology}: {name}", "us, producer to consumer", bars))
        out.append(
            Figure(
                "ring-handoff-latency",
                f"Hand-off latency: one item every {pace * 1e6:g} us (+ sleep overhead), "
                f"producer's clock to consumer's",
                panels,
                columns=2,
            )
        )
    return out


def report(modes: list[str], rate: Samples, p50: Samples, p99: Samples, pace: float) -> None:
    if "tput" in modes:
        print("\nthroughput, million items/s: median [min-max]; ratios per round\n")
        rows = []
        for v in VARIANTS:
            key = (v.topology, v.name)
            if key not in rate:
                continue
            mine = rate[key]
            vs_q = summarize(ratios(mine, rate[(v.topology, "Queue")]))
            vs_d = summarize(ratios(mine, rate[(v.topology, "deque")]))
            rows.append(
                [
                    v.topology,
                    v.name,
                    summarize(mine).fmt(2, 1e-6),
                    vs_q.fmt(2),
                    vs_d.fmt(2),
                    f"{1e9 / summarize(mine).median:.0f}",
                ]
            )
        print(
            table(
                ["topology", "variant", "M items/s", "x Queue", "x deque", "ns/item"],
                rows,
                "llrrrr",
            )
        )
        key = ("SPSC", "ring batched")
        vs_q = summarize(ratios(rate[key], rate[("SPSC", "Queue")]))
        vs_d = summarize(ratios(rate[key], rate[("SPSC", "deque")]))
        print(
            f"\ntarget: SPSC ring batched >= 5x Queue: median {vs_q.fmt(2)} -> "
            f"{'MET' if vs_q.median >= 5 else 'NOT MET'}; >= 0.5x deque: median "
            f"{vs_d.fmt(2)} -> {'MET' if vs_d.median >= 0.5 else 'NOT MET'}"
        )

    if "lat" in modes:
        print(
            f"\nhand-off latency, us (one item every ~{pace * 1e6:g} us + sleep overhead): "
            f"median [min-max] over rounds of each round's p50 / p99\n"
        )
        rows = []
        for v in VARIANTS:
            key = (v.topology, v.name)
            if key not in p50:
                continue
            rows.append(
                [
                    v.topology,
                    v.name,
                    summarize(p50[key]).fmt(1),
                    summarize(p99[key]).fmt(1),
                ]
            )
        print(table(["topology", "variant", "p50 us", "p99 us"], rows, "llrr"))


if __name__ == "__main__":
    sys.exit(main())
