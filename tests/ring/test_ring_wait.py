"""Wait strategies: timeouts, wake-ups after publish and release, alert, asyncio."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from ring_support import GENEROUS, Slot, join_all, sleeping_waiters, start, until_asleep

from conveyor.ring import (
    AlertedError,
    BlockingWait,
    FanOut,
    MCSequence,
    MPSequence,
    RingQueue,
    RingTimeoutError,
    SCSequence,
    Sequence,
    SleepingWait,
    SPSequence,
    WaitStrategy,
    YieldingWait,
)

#: How soon a woken waiter must return, on a loaded machine. A missed wake-up shows as
#: the waiter's own timeout (WAKE_TIMEOUT), far beyond this.
PROMPT = 2.0
WAKE_TIMEOUT = 10.0
#: A short wait that must time out.
SHORT = 0.3

STRATEGIES: list[Callable[[], WaitStrategy]] = [BlockingWait, YieldingWait, SleepingWait]
STRATEGY_IDS = ["blocking", "yielding", "sleeping"]


def pipeline(
    capacity: int, pub_wait: WaitStrategy | None = None, sub_wait: WaitStrategy | None = None
) -> tuple[RingQueue[Slot], SPSequence, SCSequence]:
    ring = RingQueue(Slot, capacity)
    pub, sub = SPSequence(capacity, pub_wait), SCSequence(wait=sub_wait)
    pub.then(sub).then(pub)
    return ring, pub, sub


def publish(pub: SPSequence, ring: RingQueue[Slot], value: int) -> float:
    """Publish one item; return the time just before done() made it visible."""
    cursor = pub.next()
    assert cursor >= 0
    ring.get(cursor).write(cursor, value)
    now = time.monotonic()
    pub.done(cursor)
    return now


def void(_: object) -> None:
    return None


def fill(pub: SPSequence, ring: RingQueue[Slot]) -> None:
    for value in range(ring.capacity):
        publish(pub, ring, value)
    assert pub.next() == -1


class Waiter:
    """Runs ``seq.next_blocking(timeout)`` in a thread; records the cursor and when."""

    def __init__(self, seq: Sequence, timeout: float | None = WAKE_TIMEOUT) -> None:
        self.seq = seq
        self.cursor: int | None = None
        self.returned_at = math.inf
        self.calling = threading.Event()
        self.worker = start((f"wait-{seq!r}", lambda: self._run(timeout)))[0]

    def _run(self, timeout: float | None) -> None:
        self.calling.set()
        self.cursor = self.seq.next_blocking(timeout)
        self.returned_at = time.monotonic()

    def asleep(self) -> Waiter:
        """Wait until it sleeps in its BlockingWait (any later wake needs a signal)."""
        until_asleep(self.seq)
        return self

    def started(self) -> Waiter:
        assert self.calling.wait(GENEROUS)
        return self

    def result(self, since: float) -> int:
        join_all([self.worker], GENEROUS)
        assert self.cursor is not None
        assert self.returned_at - since < PROMPT, f"woke {self.returned_at - since:.3f} s late"
        return self.cursor


# -- basics ------------------------------------------------------------------------------


def test_blocking_wait_is_the_default_and_strategies_are_kept() -> None:
    assert isinstance(SCSequence().wait_strategy, BlockingWait)
    assert isinstance(SPSequence(4).wait_strategy, BlockingWait)
    assert isinstance(MCSequence(4).wait_strategy, BlockingWait)
    yielding, sleeping = YieldingWait(), SleepingWait()
    assert SCSequence(wait=yielding).wait_strategy is yielding
    assert MPSequence(4, sleeping).wait_strategy is sleeping


def test_sleeping_wait_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="yields must be >= 0, got -1"):
        SleepingWait(yields=-1)
    for bad in (0.0, -0.5, math.nan):
        with pytest.raises(ValueError, match="max_sleep must be > 0, got"):
            SleepingWait(max_sleep=bad)


@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_next_blocking_returns_at_once_when_a_cursor_is_available(
    make: Callable[[], WaitStrategy],
) -> None:
    ring, pub, sub = pipeline(4, make(), make())
    assert pub.next_blocking(timeout=0) == 0
    publish(pub, ring, 1)
    assert sub.next_blocking(timeout=0) == 0
    assert asyncio.run(sub.next_async(timeout=0)) == 0


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_consumer_times_out_after_the_timeout_and_not_before(
    make: Callable[[], WaitStrategy],
) -> None:
    _, _, sub = pipeline(4, sub_wait=make())
    began = time.monotonic()
    with pytest.raises(RingTimeoutError, match=rf"nothing published within {SHORT} s") as info:
        sub.next_blocking(SHORT)
    elapsed = time.monotonic() - began
    assert isinstance(info.value, TimeoutError)
    assert SHORT - 0.001 <= elapsed < SHORT + GENEROUS


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_producer_on_a_full_ring_times_out(make: Callable[[], WaitStrategy]) -> None:
    ring, pub, _ = pipeline(2, pub_wait=make())
    fill(pub, ring)
    began = time.monotonic()
    with pytest.raises(RingTimeoutError, match=rf"no free slot \(ring full\) within {SHORT} s"):
        pub.next_blocking(SHORT)
    assert SHORT - 0.001 <= time.monotonic() - began < SHORT + GENEROUS


@pytest.mark.timeout(30)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_zero_timeout_fails_at_once(make: Callable[[], WaitStrategy]) -> None:
    _, _, sub = pipeline(4, sub_wait=make())
    began = time.monotonic()
    with pytest.raises(RingTimeoutError, match="within 0 s"):
        sub.next_blocking(0)
    assert time.monotonic() - began < GENEROUS


@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_negative_timeouts_are_rejected(make: Callable[[], WaitStrategy]) -> None:
    _, _, sub = pipeline(4, sub_wait=make())
    refused = r"timeout must be a number of seconds >= 0, or None; got"
    with pytest.raises(ValueError, match=f"{refused} -1"):
        sub.next_blocking(-1)
    with pytest.raises(ValueError, match=f"{refused} -0.5"):
        asyncio.run(sub.next_async(-0.5))


# -- wake-ups ----------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_waiting_consumer_wakes_after_a_publish(make: Callable[[], WaitStrategy]) -> None:
    ring, pub, sub = pipeline(4, sub_wait=make())
    waiter = Waiter(sub).started()
    if isinstance(sub.wait_strategy, BlockingWait):
        waiter.asleep()
    published = publish(pub, ring, 42)
    assert waiter.result(published) == 0
    assert ring.get(0).value == 42


@pytest.mark.timeout(40)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_producer_on_a_full_ring_wakes_after_a_release(
    make: Callable[[], WaitStrategy],
) -> None:
    ring, pub, sub = pipeline(4, pub_wait=make())
    fill(pub, ring)
    waiter = Waiter(pub).started()
    if isinstance(pub.wait_strategy, BlockingWait):
        waiter.asleep()
    assert sub.next() == 0
    released = time.monotonic()
    sub.done(0)
    assert waiter.result(released) == 4


@pytest.mark.timeout(40)
def test_in_a_three_node_chain_each_node_is_woken_by_the_one_it_waits_on() -> None:
    # pub -> a -> b -> pub, every node with a BlockingWait: b must be woken by a's done()
    # (not by pub's), and pub by b's.
    ring = RingQueue(Slot, 2)
    pub, a, b = SPSequence(2), SCSequence(), SCSequence()
    pub.then(a).then(b).then(pub)

    waiting_a, waiting_b = Waiter(a).asleep(), Waiter(b).asleep()
    assert waiting_a.result(publish(pub, ring, 0)) == 0
    assert b.next() == -1  # pub's publish is not b's business...
    released = time.monotonic()
    a.done(0)
    assert waiting_b.result(released) == 0  # ...a's release is

    publish(pub, ring, 1)
    assert a.next() == 1
    a.done(1)
    assert pub.next() == -1  # both slots still held by b
    waiting_pub = Waiter(pub).asleep()
    released = time.monotonic()
    b.done(0)
    assert waiting_pub.result(released) == 2


@pytest.mark.timeout(40)
def test_fanout_members_wake_on_publish_and_the_join_on_the_slowest_release() -> None:
    ring = RingQueue(Slot, 4)
    pub, b, c, join = SPSequence(4), SCSequence(), SCSequence(), SCSequence()
    pub.then(FanOut.to(b).and_(c)).then(join).then(pub)
    waiting = [Waiter(b).asleep(), Waiter(c).asleep(), Waiter(join).asleep()]
    published = publish(pub, ring, 7)
    assert [w.result(published) for w in waiting[:2]] == [0, 0]
    b.done(0)
    assert waiting[2].worker.is_alive()  # c still holds 0
    released = time.monotonic()
    c.done(0)
    assert waiting[2].result(released) == 0


@pytest.mark.timeout(40)
def test_a_producer_blocked_by_a_fanout_member_wakes_when_it_is_removed() -> None:
    # Regression: remove() woke nobody, so a producer waiting only for the removed (slowest)
    # member slept until something else happened to signal it.
    ring = RingQueue(Slot, 4)
    pub, slow, fast = SPSequence(4), SCSequence(), SCSequence()
    fan = FanOut.to(slow).and_(fast)
    pub.then(fan).then(pub)
    fill(pub, ring)
    fast.next()
    fast.done(3)
    waiter = Waiter(pub).asleep()
    removed = time.monotonic()
    fan.remove(slow)
    assert waiter.result(removed) == 4


@pytest.mark.timeout(40)
def test_the_join_behind_an_empty_fanout_wakes_on_publish() -> None:
    # Regression: with no member, the producer's signal stopped at the FanOut, so the join
    # (which then waits on the producer directly) never woke.
    ring = RingQueue(Slot, 4)
    pub, fan, join = SPSequence(4), FanOut(), SCSequence()
    pub.then(fan).then(join).then(pub)
    waiter = Waiter(join).asleep()
    assert waiter.result(publish(pub, ring, 1)) == 0


class SteppedFanOut(FanOut):
    """A FanOut that runs hooks around the moment a new member becomes visible."""

    before: Callable[[], None] = staticmethod(lambda: None)
    after: Callable[[], None] = staticmethod(lambda: None)

    def _publish(self, members: tuple[Any, ...]) -> None:
        self.before()
        super()._publish(members)
        self.after()


@pytest.mark.timeout(40)
def test_a_producer_held_back_by_a_joining_member_wakes_when_it_catches_up() -> None:
    # Regression: add_and_get places the member at the producer's position, makes it
    # visible, then moves it up to what was published meanwhile. A producer that lapped
    # the first position in between and went to sleep on it was never woken.
    ring = RingQueue(Slot, 4)
    pub, stayer = SPSequence(4), SCSequence()
    fan = SteppedFanOut()
    fan.and_(stayer)
    pub.then(fan).then(pub)
    waiting: list[Waiter] = []

    def lap() -> None:  # the producer runs a lap before the member becomes visible
        for value in range(4):
            publish(pub, ring, value)
        stayer.next()
        stayer.done(stayer.available() - 1)

    def sleep_on_the_new_member() -> None:
        waiting.append(Waiter(pub).asleep())

    fan.before, fan.after = lap, sleep_on_the_new_member
    fan.add_and_get(SCSequence())
    caught_up = time.monotonic()
    assert waiting[0].result(caught_up) == 4


@pytest.mark.timeout(40)
def test_a_late_subscriber_is_woken_by_the_next_publish() -> None:
    ring = RingQueue(Slot, 4)
    pub, fan = SPSequence(4), FanOut()
    pub.then(fan).then(pub)
    publish(pub, ring, 0)
    late = fan.add_and_get(SCSequence())
    waiter = Waiter(late).asleep()
    assert waiter.result(publish(pub, ring, 1)) == 1


@pytest.mark.timeout(40)
def test_a_pool_of_waiting_workers_shares_the_items() -> None:
    pub, pool = SPSequence(4), MCSequence(4)
    pub.then(pool).then(pub)
    waiters = [Waiter(pool) for _ in range(3)]
    until_asleep(pool, 3)
    published = time.monotonic()
    pub.next()
    pub.done(2)
    assert sorted(w.result(published) for w in waiters) == [0, 1, 2]


# -- alert -------------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_alert_ends_current_and_future_waits(make: Callable[[], WaitStrategy]) -> None:
    strategy = make()
    _, _, sub = pipeline(4, sub_wait=strategy)
    waiter = Waiter(sub, timeout=None).started()
    if isinstance(strategy, BlockingWait):
        waiter.asleep()
    assert not strategy.alerted
    strategy.alert()
    assert strategy.alerted
    waiter.worker.join(GENEROUS)
    assert not waiter.worker.is_alive()
    assert isinstance(waiter.worker.error, AlertedError)
    assert "nothing published: the wait strategy was alerted" in str(waiter.worker.error)
    with pytest.raises(AlertedError, match="the wait strategy was alerted"):
        sub.next_blocking(GENEROUS)
    with pytest.raises(AlertedError, match="the wait strategy was alerted"):
        asyncio.run(sub.next_async(GENEROUS))


@pytest.mark.timeout(40)
def test_alert_wakes_every_worker_of_a_pool_and_a_blocked_producer() -> None:
    pub, pool, sub = MPSequence(2), MCSequence(2), SCSequence()
    pub.then(pool).then(sub).then(pub)
    workers = [Waiter(pool, timeout=None) for _ in range(3)]
    until_asleep(pool, 3)
    pool.wait_strategy.alert()
    for w in workers:
        w.worker.join(GENEROUS)
        assert isinstance(w.worker.error, AlertedError)
    pub.next()
    pub.next()
    producer = Waiter(pub, timeout=None).asleep()
    pub.wait_strategy.alert()
    producer.worker.join(GENEROUS)
    assert isinstance(producer.worker.error, AlertedError)
    assert "no free slot (ring full): the wait strategy was alerted" in str(producer.worker.error)


# -- asyncio -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_a_coroutine_consumes_what_a_producer_thread_publishes(
    make: Callable[[], WaitStrategy],
) -> None:
    count = 300
    ring, pub, sub = pipeline(8, make(), make())

    def produce() -> None:
        for value in range(count):
            cursor = pub.next_blocking(GENEROUS)
            ring.get(cursor).write(cursor, value)
            pub.done(cursor)

    async def consume() -> list[int]:
        seen: list[int] = []
        while len(seen) < count:
            lo = await sub.next_async(GENEROUS)
            hi = sub.available()
            for cursor in range(lo, hi):
                slot = ring.get(cursor)
                assert slot.stamp == cursor
                seen.append(slot.value)
            sub.done(hi - 1)
        return seen

    producer = start(("producer", produce))
    assert asyncio.run(consume()) == list(range(count))
    join_all(producer)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("make", STRATEGIES, ids=STRATEGY_IDS)
def test_an_async_wait_times_out_while_the_event_loop_keeps_running(
    make: Callable[[], WaitStrategy],
) -> None:
    _, _, sub = pipeline(4, sub_wait=make())

    async def main() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        began = time.monotonic()
        with pytest.raises(RingTimeoutError, match=rf"nothing published within {SHORT} s"):
            await sub.next_async(SHORT)
        elapsed = time.monotonic() - began
        task.cancel()
        return elapsed, ticks

    elapsed, ticks = asyncio.run(main())
    assert SHORT - 0.001 <= elapsed < SHORT + GENEROUS
    assert ticks >= 2  # the loop was not blocked by the wait


@pytest.mark.timeout(40)
def test_a_coroutine_waiting_on_a_blocking_wait_is_woken_and_alerted() -> None:
    ring, pub, sub = pipeline(4)

    async def main() -> None:
        waiting = asyncio.create_task(sub.next_async(WAKE_TIMEOUT))
        while not sleeping_waiters(sub):
            await asyncio.sleep(0)  # a yield to the loop, not a delay
        publisher = start(("publisher", lambda: void(publish(pub, ring, 5))))
        assert await waiting == 0
        join_all(publisher)
        sub.done(0)

        waiting = asyncio.create_task(sub.next_async(None))
        while not sleeping_waiters(sub):
            await asyncio.sleep(0)
        sub.wait_strategy.alert()
        with pytest.raises(AlertedError, match="the wait strategy was alerted"):
            await waiting

    asyncio.run(asyncio.wait_for(main(), GENEROUS))


@pytest.mark.timeout(40)
def test_a_coroutine_producer_is_woken_by_a_consumer_thread() -> None:
    ring, pub, sub = pipeline(2)
    fill(pub, ring)

    async def main() -> int:
        waiting = asyncio.create_task(pub.next_async(WAKE_TIMEOUT))
        while not sleeping_waiters(pub):
            await asyncio.sleep(0)

        def release() -> None:
            assert sub.next() == 0
            sub.done(0)

        consumer = start(("consumer", release))
        cursor = await waiting
        join_all(consumer)
        return cursor

    assert asyncio.run(asyncio.wait_for(main(), GENEROUS)) == 2


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_a_bad_timeout_is_refused_even_when_a_cursor_is_ready(bad: float) -> None:
    pub = SPSequence(8)
    sub = SCSequence()
    pub.then(sub).then(pub)
    with pytest.raises(ValueError, match="timeout must be"):
        pub.next_blocking(timeout=bad)  # a cursor is available: still refused


def test_an_infinite_timeout_waits_like_none() -> None:
    pub = SPSequence(8)
    sub = SCSequence()
    pub.then(sub).then(pub)
    assert pub.next_blocking(timeout=math.inf) == 0
