"""SP, SC, MP and MC sequences driven from one thread: cursors, batches, CursorError."""

from __future__ import annotations

import pytest
from ring_support import Slot

from conveyor.ring import (
    CursorError,
    GraphError,
    MCSequence,
    MPSequence,
    RingQueue,
    SCSequence,
    SPSequence,
)

PUBLISH_ONLY = "a producer may publish only cursors after"
RELEASE_ONLY = "a consumer may release only cursors after"
NOT_CLAIMED = "not a cursor claimed by next\\(\\) and not yet done"


def sp_sc(capacity: int) -> tuple[RingQueue[Slot], SPSequence, SCSequence]:
    ring = RingQueue(Slot, capacity)
    pub, sub = SPSequence(capacity), SCSequence()
    pub.then(sub).then(pub)
    return ring, pub, sub


def publish(pub: SPSequence | MPSequence, ring: RingQueue[Slot], value: int) -> int:
    cursor = pub.next()
    assert cursor >= 0
    ring.get(cursor).write(cursor, value)
    pub.done(cursor)
    return cursor


# -- SP / SC -----------------------------------------------------------------------------


def test_sp_next_is_idempotent_until_done() -> None:
    _, pub, _ = sp_sc(4)
    assert [pub.next() for _ in range(3)] == [0, 0, 0]
    pub.done(0)
    assert [pub.next() for _ in range(2)] == [1, 1]
    assert pub.current() == 0


def test_sc_next_is_idempotent_until_done() -> None:
    ring, pub, sub = sp_sc(4)
    assert sub.next() == -1
    publish(pub, ring, 10)
    publish(pub, ring, 11)
    assert [sub.next() for _ in range(3)] == [0, 0, 0]
    sub.done(0)
    assert [sub.next() for _ in range(2)] == [1, 1]
    sub.done(1)
    assert sub.next() == -1
    assert sub.current() == 1


def test_sp_fills_the_ring_then_reports_unavailable() -> None:
    ring, pub, sub = sp_sc(4)
    assert [publish(pub, ring, i) for i in range(4)] == [0, 1, 2, 3]
    assert pub.next() == -1
    assert pub.next() == -1
    assert sub.next() == 0
    sub.done(0)
    assert pub.next() == 4  # slot 0 is free again, one lap later
    assert pub.available() == 5


def test_sp_batch_publish_with_available() -> None:
    ring, pub, sub = sp_sc(8)
    lo = pub.next()
    hi = pub.available()
    assert (lo, hi) == (0, 8)
    for cursor in range(lo, hi):
        ring.get(cursor).write(cursor, cursor * 3)
    pub.done(hi - 1)
    assert pub.current() == 7
    assert pub.next() == -1
    lo = sub.next()
    hi = sub.available()
    assert (lo, hi) == (0, 8)
    assert [ring.get(c).value for c in range(lo, hi)] == [c * 3 for c in range(8)]
    sub.done(hi - 1)
    assert pub.next() == 8
    assert pub.available() == 16


def test_sp_may_publish_part_of_a_batch() -> None:
    _ring, pub, sub = sp_sc(8)
    assert pub.next() == 0
    assert pub.available() == 8
    pub.done(2)  # publish 0..2, keep 3..7 for later
    assert sub.next() == 0
    assert sub.available() == 3
    assert pub.next() == 3
    pub.done(7)
    assert sub.available() == 3  # a cache: next() refreshes it only once it is used up
    sub.done(2)
    assert sub.next() == 3
    assert sub.available() == 8


def test_sp_available_is_bounded_by_what_the_consumer_released() -> None:
    ring, pub, sub = sp_sc(8)
    for i in range(8):
        publish(pub, ring, i)
    assert sub.next() == 0
    sub.done(2)
    assert pub.next() == 8
    assert pub.available() == 11  # slots of cursors 0..2 only
    with pytest.raises(CursorError, match=PUBLISH_ONLY):
        pub.done(11)
    pub.done(10)
    assert pub.next() == -1


def test_sp_done_outside_what_it_holds_is_a_cursor_error() -> None:
    _ring, pub, _sub = sp_sc(4)
    with pytest.raises(
        CursorError, match=rf"done\(0\): {PUBLISH_ONLY} -1 and below available\(\) = 0"
    ):
        pub.done(0)  # before any next(): nothing is held
    assert pub.next() == 0
    assert pub.available() == 4
    for bad in (4, 5, 100, -1, -7):
        with pytest.raises(CursorError, match=PUBLISH_ONLY):
            pub.done(bad)
    pub.done(1)
    for bad in (0, 1, -1, 4):
        with pytest.raises(CursorError, match=rf"{PUBLISH_ONLY} 1 and below available\(\) = 4"):
            pub.done(bad)
    assert pub.current() == 1
    assert isinstance(CursorError("x"), ValueError)


def test_sc_done_outside_what_next_made_available_is_a_cursor_error() -> None:
    ring, pub, sub = sp_sc(8)
    for i in range(3):
        publish(pub, ring, i)
    with pytest.raises(CursorError, match=rf"done\(0\): {RELEASE_ONLY} -1 up to -1"):
        sub.done(0)  # published, but next() has not made it available yet
    assert sub.next() == 0
    assert sub.available() == 3
    for bad in (3, 4, -1, 10**12):
        with pytest.raises(CursorError, match=rf"{RELEASE_ONLY} -1 up to 2, the last one next"):
            sub.done(bad)
    sub.done(0)
    for bad in (0, -1, 3):
        with pytest.raises(CursorError, match=RELEASE_ONLY):
            sub.done(bad)
    sub.done(2)
    assert sub.current() == 2
    assert sub.next() == -1


def test_sp_sc_over_many_laps_read_what_was_written() -> None:
    ring, pub, sub = sp_sc(4)
    seen: list[int] = []
    for i in range(50):
        publish(pub, ring, i * 7)
        if i % 3 == 2:  # drain in batches now and then
            lo = sub.next()
            hi = sub.available()
            for cursor in range(lo, hi):
                assert ring.get(cursor).stamp == cursor
                seen.append(ring.get(cursor).value)
            sub.done(hi - 1)
    assert seen == [i * 7 for i in range(48)]


def test_sc_start_position_skips_earlier_cursors() -> None:
    pub, sub = SPSequence(8), SCSequence(2)
    pub.then(sub).then(pub)
    assert pub.next() == 0
    pub.done(5)
    assert sub.next() == 3
    assert sub.available() == 6


# -- MP ----------------------------------------------------------------------------------


def mp_sc(capacity: int) -> tuple[RingQueue[Slot], MPSequence, SCSequence]:
    ring = RingQueue(Slot, capacity)
    pub, sub = MPSequence(capacity), SCSequence()
    pub.then(sub).then(pub)
    return ring, pub, sub


def test_mp_next_claims_a_distinct_cursor_per_call() -> None:
    _ring, pub, sub = mp_sc(4)
    assert [pub.next() for _ in range(5)] == [0, 1, 2, 3, -1]
    assert pub.current() == 3
    assert sub.next() == -1  # claimed is not published


def test_mp_consumer_stops_at_the_first_claimed_cursor_not_done() -> None:
    _ring, pub, sub = mp_sc(8)
    claimed = [pub.next() for _ in range(4)]
    assert claimed == [0, 1, 2, 3]
    pub.done(1)
    pub.done(3)
    assert sub.next() == -1
    pub.done(0)
    assert sub.next() == 0
    assert sub.available() == 2
    sub.done(1)
    pub.done(2)
    assert sub.next() == 2
    assert sub.available() == 4


def test_mp_lap_numbers_tell_this_lap_from_the_last() -> None:
    # Slot 0 holds "done in lap 0" when cursor 4 (lap 1) is claimed: not done yet.
    _ring, pub, sub = mp_sc(4)
    for _ in range(4):
        pub.done(pub.next())
    sub.next()
    sub.done(sub.available() - 1)
    assert pub.next() == 4
    assert pub.next() == 5
    pub.done(5)
    assert sub.next() == -1
    pub.done(4)
    assert sub.next() == 4
    assert sub.available() == 6


def test_mp_done_of_a_cursor_not_held_is_a_cursor_error() -> None:
    _ring, pub, sub = mp_sc(4)
    for bad in (0, -1, 3):
        with pytest.raises(
            CursorError, match=rf"MPSequence\(current=-1\)\.done\({bad}\): {NOT_CLAIMED}"
        ):
            pub.done(bad)
    assert [pub.next(), pub.next()] == [0, 1]
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        pub.done(2)  # not claimed yet
    pub.done(1)
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        pub.done(1)  # already done
    pub.done(0)
    sub.next()
    sub.done(1)
    claims = [pub.next() for _ in range(4)]
    assert claims == [2, 3, 4, 5]
    for bad in (0, 1, 6, -3, 2 + 4 * 100):
        with pytest.raises(CursorError, match=NOT_CLAIMED):
            pub.done(bad)
    for cursor in (5, 2, 4, 3):
        pub.done(cursor)
    assert sub.next() == 2
    assert sub.available() == 6


def test_mp_never_claims_a_slot_the_consumer_holds() -> None:
    _ring, pub, sub = mp_sc(2)
    for cursor in range(2):
        assert pub.next() == cursor
        pub.done(cursor)
    assert sub.next() == 0  # the consumer holds 0 and 1 while it reads them
    assert pub.next() == -1
    sub.done(0)
    assert pub.next() == 2
    assert pub.next() == -1
    sub.done(1)
    assert pub.next() == 3


def test_a_multi_sequence_recovers_after_asking_before_its_graph_was_closed() -> None:
    # Regression: the claim lock stayed held when the barrier raised GraphError, so every
    # later next() returned -2 (a lost race), even after the graph was closed.
    pub = MPSequence(4)
    for _ in range(3):
        with pytest.raises(GraphError, match="is not part of a closed graph"):
            pub.next()
    workers = MCSequence(4)
    for _ in range(3):
        with pytest.raises(GraphError, match="is not part of a closed graph"):
            workers.next()
    pub.then(workers).then(pub)
    assert pub.next() == 0
    pub.done(0)
    assert workers.next() == 0


# -- MC ----------------------------------------------------------------------------------


def sp_mc(capacity: int) -> tuple[RingQueue[Slot], SPSequence, MCSequence]:
    ring = RingQueue(Slot, capacity)
    pub, workers = SPSequence(capacity), MCSequence(capacity)
    pub.then(workers).then(pub)
    return ring, pub, workers


def test_mc_next_claims_each_published_cursor_once() -> None:
    _ring, pub, workers = sp_mc(8)
    assert pub.next() == 0
    pub.done(4)
    assert [workers.next() for _ in range(6)] == [0, 1, 2, 3, 4, -1]
    assert workers.current() == 4


def test_mc_producer_waits_for_every_cursor_before_the_slot_to_reuse() -> None:
    _ring, pub, workers = sp_mc(4)
    pub.next()
    pub.done(3)
    claims = [workers.next() for _ in range(4)]
    assert pub.next() == -1
    for cursor in (3, 2, 1):
        workers.done(cursor)
    assert pub.next() == -1  # 0 is still being read, and it is the slot to reuse first
    workers.done(claims[0])
    assert pub.next() == 4
    assert pub.available() == 8


def test_mc_done_of_a_cursor_not_held_is_a_cursor_error() -> None:
    _ring, pub, workers = sp_mc(4)
    with pytest.raises(CursorError, match=rf"MCSequence\(current=-1\)\.done\(0\): {NOT_CLAIMED}"):
        workers.done(0)
    pub.next()
    pub.done(3)
    assert workers.next() == 0
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        workers.done(1)  # published, not claimed
    workers.done(0)
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        workers.done(0)
    for _ in range(3):
        workers.done(workers.next())
    assert pub.next() == 4
    pub.done(4)
    assert workers.next() == 4
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        workers.done(0)  # same slot, one lap earlier
    with pytest.raises(CursorError, match=NOT_CLAIMED):
        workers.done(8)  # same slot, one lap later
    workers.done(4)
