"""Bounded multi-threaded stress tests: small rings (constant wrap-around), many threads.

Each producer runs for RUN seconds (or until it has published its maximum), then the
pipeline is closed with poison items or alerts, every thread is joined, and what was
consumed is compared with what was published. Every reader checks a slot's stamp when
it reads it and again after processing it: a producer that overwrote a slot still in
use shows up as a stamp from a later lap.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import pytest
from ring_support import GENEROUS, Slot, join_all, start

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
    YieldingWait,
)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(50)]

#: How long producers keep publishing, in seconds.
RUN = 1.5
POISON = -1


def check(ring: RingQueue[Slot], cursor: int) -> int:
    """The value at ``cursor``, after checking that the slot was written for it."""
    slot = ring.get(cursor)
    stamp, value = slot.stamp, slot.value
    assert stamp == cursor, f"slot of cursor {cursor} holds cursor {stamp}: overwritten"
    return value


def recheck(ring: RingQueue[Slot], cursor: int, value: int) -> None:
    """After processing: the slot still holds what was read from it."""
    slot = ring.get(cursor)
    assert (slot.stamp, slot.value) == (cursor, value), (
        f"slot of cursor {cursor} changed while held: now cursor {slot.stamp}"
    )


def test_four_producers_and_three_workers_move_every_item_exactly_once() -> None:
    capacity, producers, workers_count = 16, 4, 3
    ring = RingQueue(Slot, capacity)
    pub, workers = MPSequence(capacity), MCSequence(capacity)
    pub.then(workers).then(pub)
    deadline = time.monotonic() + RUN
    produced = [0] * producers
    consumed: list[list[int]] = [[] for _ in range(workers_count)]

    def produce(pid: int) -> None:
        seq = 0
        while seq < 200_000 and time.monotonic() < deadline:
            cursor = pub.next_blocking(GENEROUS)
            ring.get(cursor).write(cursor, pid * 10**9 + seq)
            pub.done(cursor)
            seq += 1
        produced[pid] = seq

    def work(wid: int) -> None:
        got = consumed[wid]
        while True:
            cursor = workers.next_blocking(GENEROUS)
            value = check(ring, cursor)
            got.append(value)
            recheck(ring, cursor, value)
            workers.done(cursor)
            if value == POISON:
                return

    threads = start(*((f"worker-{w}", lambda w=w: work(w)) for w in range(workers_count)))
    join_all(start(*((f"producer-{p}", lambda p=p: produce(p)) for p in range(producers))))
    for _ in range(workers_count):  # one poison item per worker: each stops at its first
        cursor = pub.next_blocking(GENEROUS)
        ring.get(cursor).write(cursor, POISON)
        pub.done(cursor)
    join_all(threads)

    assert [got.count(POISON) for got in consumed] == [1] * workers_count
    items = [value for got in consumed for value in got if value != POISON]
    expected = {pid * 10**9 + seq for pid in range(producers) for seq in range(produced[pid])}
    duplicates = [value for value, n in Counter(items).items() if n > 1]
    assert not duplicates, f"consumed more than once: {duplicates[:10]}"
    assert set(items) == expected, f"lost: {sorted(expected - set(items))[:10]}"
    assert len(items) > 10 * capacity  # the ring wrapped around many times
    for got in consumed:  # a worker sees each producer's items in the order published
        for pid in range(producers):
            mine = [value for value in got if value // 10**9 == pid]
            assert mine == sorted(mine)


def test_a_fanout_delivers_every_item_to_each_subscriber_in_order() -> None:
    capacity = 32
    ring = RingQueue(Slot, capacity)
    pub = SPSequence(capacity)
    subs = [
        SCSequence(wait=BlockingWait()),
        SCSequence(wait=YieldingWait()),
        SCSequence(wait=SleepingWait()),
    ]
    pub.then(FanOut.to(subs[0]).and_(subs[1]).and_(subs[2])).then(pub)
    deadline = time.monotonic() + RUN
    received: list[list[int]] = [[] for _ in subs]
    published = [0]

    def produce() -> None:
        value = 0
        while value < 500_000 and time.monotonic() < deadline:
            lo = pub.next_blocking(GENEROUS)
            hi = min(pub.available(), lo + random.randint(1, capacity))
            for cursor in range(lo, hi):
                ring.get(cursor).write(cursor, value)
                value += 1
            pub.done(hi - 1)
        published[0] = value
        cursor = pub.next_blocking(GENEROUS)
        ring.get(cursor).write(cursor, POISON)
        pub.done(cursor)

    def subscribe(i: int) -> None:
        sub, got = subs[i], received[i]
        while True:
            lo = sub.next_blocking(GENEROUS)
            hi = sub.available()
            batch = [check(ring, cursor) for cursor in range(lo, hi)]
            got.extend(batch)
            for cursor, value in zip(range(lo, hi), batch, strict=True):
                recheck(ring, cursor, value)
            sub.done(hi - 1)
            if batch[-1] == POISON:
                return

    join_all(
        start(("producer", produce), *((f"sub-{i}", lambda i=i: subscribe(i)) for i in range(3)))
    )
    assert published[0] > 10 * capacity
    for got in received:
        assert got == [*range(published[0]), POISON]


def test_subscribers_joining_and_leaving_cause_no_loss_for_those_that_stay() -> None:
    capacity = 16
    ring = RingQueue(Slot, capacity)
    pub, fan = SPSequence(capacity), FanOut()
    pub.then(fan).then(pub)
    stayers = [fan.add_and_get(SCSequence()) for _ in range(2)]
    churn_waits = [BlockingWait(), SleepingWait()]
    deadline = time.monotonic() + RUN
    stop = threading.Event()
    stayed: list[list[int]] = [[] for _ in stayers]
    runs: list[list[tuple[int, list[int]]]] = [[] for _ in churn_waits]
    published = [0]

    def produce() -> None:
        cursor = -1
        while cursor < 1_000_000 and time.monotonic() < deadline:
            lo = pub.next_blocking(GENEROUS)
            hi = pub.available()
            for cursor in range(lo, hi):
                ring.get(cursor).write(cursor, cursor)
            pub.done(hi - 1)
        published[0] = cursor + 1
        cursor = pub.next_blocking(GENEROUS)
        ring.get(cursor).write(cursor, POISON)
        pub.done(cursor)

    def stay(i: int) -> None:
        sub, got = stayers[i], stayed[i]
        while True:
            lo = sub.next_blocking(GENEROUS)
            hi = sub.available()
            batch = [check(ring, cursor) for cursor in range(lo, hi)]
            got.extend(batch)
            sub.done(hi - 1)
            if batch[-1] == POISON:
                return

    def churn(i: int) -> None:
        rng = random.Random(i)
        sub = SCSequence(wait=churn_waits[i])  # the same sequence rejoins every time
        while not stop.is_set():
            before = pub.current()
            assert fan.add_and_get(sub) is sub
            joined_at = sub.current()
            assert joined_at >= before  # nothing published before it joined
            run: list[int] = []
            runs[i].append((joined_at, run))
            try:
                for _ in range(rng.randint(1, 8)):
                    lo = sub.next_blocking(GENEROUS)
                    hi = min(sub.available(), lo + rng.randint(1, 2 * capacity))
                    batch = [check(ring, cursor) for cursor in range(lo, hi)]
                    if rng.random() < 0.3:
                        os.sched_yield()  # hold the batch a little longer
                    for cursor, value in zip(range(lo, hi), batch, strict=True):
                        recheck(ring, cursor, value)
                    run.extend(batch)
                    sub.done(hi - 1)
                    if batch[-1] == POISON:
                        return
            except AlertedError:
                return
            finally:
                fan.remove(sub)
                assert sub.current() == -1

    churners = start(*((f"churn-{i}", lambda i=i: churn(i)) for i in range(len(churn_waits))))
    join_all(start(("producer", produce), *((f"stay-{i}", lambda i=i: stay(i)) for i in range(2))))
    stop.set()
    for wait in churn_waits:  # a churner that joined after the poison waits for ever
        wait.alert()
    join_all(churners)

    assert published[0] > 10 * capacity
    for got in stayed:
        assert got == [*range(published[0]), POISON]
    for i, churner_runs in enumerate(runs):
        assert len(churner_runs) >= 2, f"churner {i} joined only {len(churner_runs)} time(s)"
        for joined_at, run in churner_runs:
            items = [value for value in run if value != POISON]
            # A contiguous run of the stream, starting right after where it joined.
            assert items == list(range(joined_at + 1, joined_at + 1 + len(items)))
    assert sum(len(run) for churner_runs in runs for _, run in churner_runs) > 0


def test_no_slot_is_overwritten_before_every_consumer_released_it() -> None:
    # pub -> FanOut(reader, pool of 2 workers) -> join -> pub, on 8 slots: the reader and
    # the workers hold what they read while they "process" it (yielding the processor).
    capacity, pool_size = 8, 2
    ring = RingQueue(Slot, capacity)
    pub, reader, pool, join = (
        SPSequence(capacity),
        SCSequence(wait=YieldingWait()),
        MCSequence(capacity),
        SCSequence(),
    )
    pub.then(FanOut.to(reader).and_(pool)).then(join).then(pub)
    deadline = time.monotonic() + RUN
    counts: Counter[str] = Counter()
    published = [0]

    def produce() -> None:
        value = 0
        while value < 500_000 and time.monotonic() < deadline:
            cursor = pub.next_blocking(GENEROUS)
            ring.get(cursor).write(cursor, value * 7)
            pub.done(cursor)
            value += 1
        published[0] = value
        for _ in range(pool_size):  # one per worker; the reader and the join see both
            cursor = pub.next_blocking(GENEROUS)
            ring.get(cursor).write(cursor, POISON)
            pub.done(cursor)

    def read_in_batches(name: str, seq: SCSequence, process: bool) -> None:
        poisons = expected = 0
        while poisons < pool_size:
            lo = seq.next_blocking(GENEROUS)
            hi = seq.available()
            batch = [check(ring, cursor) for cursor in range(lo, hi)]
            if process:
                os.sched_yield()
            for cursor, value in zip(range(lo, hi), batch, strict=True):
                recheck(ring, cursor, value)
                if value == POISON:
                    poisons += 1
                else:
                    assert value == expected * 7
                    expected += 1
            seq.done(hi - 1)
        counts[name] = expected

    def work(name: str) -> None:
        while True:
            cursor = pool.next_blocking(GENEROUS)
            value = check(ring, cursor)
            os.sched_yield()
            recheck(ring, cursor, value)
            pool.done(cursor)
            if value == POISON:
                return
            counts[name] += 1

    join_all(
        start(
            ("producer", produce),
            ("reader", lambda: read_in_batches("reader", reader, True)),
            ("join", lambda: read_in_batches("join", join, False)),
            *((f"worker-{w}", lambda w=w: work(f"worker-{w}")) for w in range(pool_size)),
        )
    )
    assert published[0] > 10 * capacity
    assert counts["reader"] == counts["join"] == published[0]
    assert counts["worker-0"] + counts["worker-1"] == published[0]


def test_alerting_every_strategy_stops_a_running_chain() -> None:
    # pub -> a -> b -> pub, each thread looping in blocking waits until alerted.
    capacity = 8
    ring = RingQueue(Slot, capacity)
    pub, a, b = SPSequence(capacity), SCSequence(), SCSequence(wait=SleepingWait())
    pub.then(a).then(b).then(pub)
    before = set(threading.enumerate())
    enough = threading.Event()
    seen = {"a": 0, "b": 0}

    def produce() -> None:
        value = 0
        try:
            while not pub.wait_strategy.alerted:
                cursor = pub.next_blocking(GENEROUS)
                ring.get(cursor).write(cursor, value)
                pub.done(cursor)
                value += 1
        except AlertedError:
            pass

    def consume(name: str, seq: SCSequence) -> None:
        try:
            while True:
                lo = seq.next_blocking(GENEROUS)
                hi = seq.available()
                for cursor in range(lo, hi):
                    assert check(ring, cursor) == seen[name]
                    seen[name] += 1
                seq.done(hi - 1)
                if name == "b" and seen[name] >= 20 * capacity:
                    enough.set()
        except AlertedError:
            pass

    threads = start(
        ("producer", produce), ("a", lambda: consume("a", a)), ("b", lambda: consume("b", b))
    )
    assert enough.wait(GENEROUS)
    for seq in (pub, a, b):
        seq.wait_strategy.alert()
    join_all(threads)
    assert set(threading.enumerate()) == before
    assert seen["b"] <= seen["a"] <= pub.current() + 1
    assert seen["b"] >= 20 * capacity
