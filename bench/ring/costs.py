"""Per-call costs of ``conveyor.ring`` operations, one thread, no contention.

What the other benchmarks pay per item or per batch, measured in isolation with
``timeit`` (best of ``--repeat``; per-call figures include the loop around the call),
next to the standard containers. Cross-thread effects (cache-line transfers, GIL
hand-offs, wake-ups) come on top; see handoff.py for those.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
import timeit
from collections import deque
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _stats import environment, source_state, table
from conveyor.ring import (
    BlockingWait,
    MCSequence,
    RingQueue,
    SCSequence,
    SPSequence,
    YieldingWait,
)

ITEMS = 4096


class Msg:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def best_ns(fn: Callable[[], object], per: int, repeat: int, number: int = 1) -> float:
    """Best of ``repeat`` timings of ``number`` calls of ``fn()``, in ns per item
    (``per`` items per call)."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number / per * 1e9


def spsc_cycle(batch: int) -> Callable[[], None]:
    """Publish and consume ITEMS values through an SP/SC pair, ``batch`` per done()."""
    ring = RingQueue(Msg, ITEMS)
    slots = [ring.get(i) for i in range(ITEMS)]
    pub = SPSequence(ITEMS)
    sub = SCSequence()
    pub.then(sub).then(pub)
    mask = ITEMS - 1

    def run() -> None:
        sent = 0
        while sent < ITEMS:
            c = pub.next()
            hi = min(pub.available(), c + batch)
            for i in range(c, hi):
                slots[i & mask].value = i
            pub.done(hi - 1)
            sent += hi - c
        got = 0
        while got < ITEMS:
            c = sub.next()
            hi = min(sub.available(), c + batch)
            for i in range(c, hi):
                slots[i & mask].value  # noqa: B018  (the read is what is measured)
            sub.done(hi - 1)
            got += hi - c

    return run


def mc_costs(repeat: int) -> tuple[float, float]:
    """Best ns per item of (claim+done through an MC pool; the reclaimer's scan of the
    pool's per-slot done flags), each timed alone on a batch of ITEMS."""
    pub = SPSequence(2 * ITEMS)
    pool = MCSequence(2 * ITEMS)
    rec = SCSequence()
    pub.then(pool).then(rec).then(pub)
    best_claim = best_scan = float("inf")
    for _ in range(repeat):
        c = pub.next()
        pub.done(c + ITEMS - 1)  # untimed: publish a batch
        nxt, done = pool.next, pool.done
        t0 = time.perf_counter()
        for _ in range(ITEMS):
            done(nxt())
        t1 = time.perf_counter()
        lo = rec.next()
        hi = rec.available()
        t2 = time.perf_counter()
        rec.done(hi - 1)
        if hi - lo != ITEMS:
            raise AssertionError("the reclaimer did not see the whole batch")
        best_claim = min(best_claim, t1 - t0)
        best_scan = min(best_scan, t2 - t1)
    return best_claim / ITEMS * 1e9, best_scan / ITEMS * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    rep = args.repeat
    print(environment())
    print(f"# code: {source_state('src/conveyor/ring')}")
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")

    ring = RingQueue(Msg, ITEMS)
    slots = [ring.get(i) for i in range(ITEMS)]
    mask = ITEMS - 1
    rows: list[list[str]] = []

    def add(what: str, ns: float, note: str = "") -> None:
        rows.append([what, f"{ns:.0f}", note])

    add(
        "loop overhead (list comprehension)",
        best_ns(lambda: [None for _ in range(ITEMS)], ITEMS, rep),
        "included in the per-slot rows below",
    )
    add(
        "RingQueue.get(c)",
        best_ns(lambda: [ring.get(i) for i in range(ITEMS)], ITEMS, rep),
        "a method call per slot",
    )
    add(
        "slots[c & mask] (list of the slots)",
        best_ns(lambda: [slots[i & mask] for i in range(ITEMS)], ITEMS, rep),
        "what the benchmarks use",
    )
    for batch in (1, 16, 256, 4096):
        add(
            f"SP publish + SC consume, batch {batch}",
            best_ns(spsc_cycle(batch), ITEMS, rep),
            "per item: next/available/done per batch + slot write and read",
        )
    claim, scan = mc_costs(rep)
    add("MCSequence next() + done(), per item", claim, "a claim lock per next()")
    add("SCSequence.next() behind an MC pool, per item", scan, "scans the per-slot done flags")

    idle = BlockingWait()
    add("BlockingWait.signal(), nobody waiting", best_ns(idle.signal, 1, rep, ITEMS))
    # a waiter that has been notified but has not run yet (it is waiting for the GIL):
    # the count is still > 0, so every signal() takes the lock and notifies again
    stuck = BlockingWait()
    stuck._waiting = 1  # what the count reads between notify and the waiter's wake-up
    add(
        "BlockingWait.signal(), a woken waiter not yet run",
        best_ns(stuck.signal, 1, rep, ITEMS),
        "paid by every done() until the waiter holds the GIL",
    )
    add("YieldingWait.signal() (no-op)", best_ns(YieldingWait().signal, 1, rep, ITEMS))
    lock = threading.Lock()

    def lock_pair() -> None:
        if lock.acquire(False):
            lock.release()

    add("threading.Lock acquire(False)+release", best_ns(lock_pair, 1, rep, ITEMS), "MC/MP claim")
    d: deque[int] = deque()

    def deque_pair() -> None:
        for i in range(ITEMS):
            d.append(i)
        for _ in range(ITEMS):
            d.popleft()

    add("deque append + popleft", best_ns(deque_pair, ITEMS, rep))
    sq: queue.SimpleQueue[int] = queue.SimpleQueue()

    def sq_pair() -> None:
        for i in range(ITEMS):
            sq.put(i)
        for _ in range(ITEMS):
            sq.get_nowait()

    add("SimpleQueue put + get_nowait", best_ns(sq_pair, ITEMS, rep))
    q: queue.Queue[int] = queue.Queue()

    def q_pair() -> None:
        for i in range(ITEMS):
            q.put(i)
        for _ in range(ITEMS):
            q.get_nowait()

    add("Queue put + get_nowait", best_ns(q_pair, ITEMS, max(3, rep // 20)))
    print(table(["operation", "ns", "note"], rows, align="lrl"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
