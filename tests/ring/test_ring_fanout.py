"""FanOut driven from one thread: branches, joins, nesting, subscribe and unsubscribe."""

from __future__ import annotations

import pytest
from ring_support import Slot

from conveyor.ring import (
    CursorError,
    FanOut,
    GraphError,
    MCSequence,
    MPSequence,
    RingQueue,
    SCSequence,
    SPSequence,
)


def publish_n(pub: SPSequence, ring: RingQueue[Slot], values: range) -> None:
    for value in values:
        cursor = pub.next()
        assert cursor >= 0, f"ring full before publishing {value}"
        ring.get(cursor).write(cursor, value)
        pub.done(cursor)


def drain(sub: SCSequence, ring: RingQueue[Slot], limit: int | None = None) -> list[int]:
    """Read and release everything ``sub`` may read now (at most ``limit`` items)."""
    lo = sub.next()
    if lo < 0:
        return []
    hi = sub.available()
    if limit is not None:
        hi = min(hi, lo + limit)
    values = []
    for cursor in range(lo, hi):
        slot = ring.get(cursor)
        assert slot.stamp == cursor, f"slot of {cursor} was overwritten by {slot.stamp}"
        values.append(slot.value)
    sub.done(hi - 1)
    return values


def test_every_member_sees_every_item_and_the_join_waits_for_the_slowest() -> None:
    ring = RingQueue(Slot, 4)
    pub, b, c, reclaim = SPSequence(4), SCSequence(), SCSequence(), SCSequence()
    fan = FanOut.to(b).and_(c)
    pub.then(fan).then(reclaim).then(pub)
    assert fan.members == (b, c)
    publish_n(pub, ring, range(4))
    assert pub.next() == -1
    assert drain(b, ring) == [0, 1, 2, 3]
    assert reclaim.next() == -1  # c has not read anything yet
    assert drain(c, ring, limit=2) == [0, 1]
    assert drain(reclaim, ring) == [0, 1]
    assert pub.next() == 4
    assert pub.available() == 6
    assert drain(c, ring) == [2, 3]
    assert drain(reclaim, ring) == [2, 3]
    publish_n(pub, ring, range(4, 8))
    assert drain(c, ring) == [4, 5, 6, 7]
    assert drain(b, ring) == [4, 5, 6, 7]
    assert drain(reclaim, ring) == [4, 5, 6, 7]


def test_the_producer_is_held_back_by_the_slowest_member_without_a_join() -> None:
    ring = RingQueue(Slot, 2)
    pub, b, c = SPSequence(2), SCSequence(), SCSequence()
    pub.then(FanOut.to(b).and_(c)).then(pub)
    publish_n(pub, ring, range(2))
    assert drain(b, ring) == [0, 1]
    assert pub.next() == -1
    assert drain(c, ring, limit=1) == [0]
    assert pub.next() == 2
    assert pub.available() == 3


def test_an_empty_fanout_does_not_hold_the_producer_back() -> None:
    ring = RingQueue(Slot, 4)
    pub, fan = SPSequence(4), FanOut()
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(50))  # nobody subscribed: items are dropped
    assert pub.current() == 49
    assert fan.members == ()
    assert fan.current() == 49


def test_an_empty_fanout_passes_items_straight_to_its_join() -> None:
    ring = RingQueue(Slot, 4)
    pub, fan, reclaim = SPSequence(4), FanOut(), SCSequence()
    pub.then(fan).then(reclaim).then(pub)
    publish_n(pub, ring, range(4))
    assert pub.next() == -1  # the join holds the producer back
    assert drain(reclaim, ring) == [0, 1, 2, 3]


def test_a_late_subscriber_sees_only_what_is_published_after_it_joined() -> None:
    ring = RingQueue(Slot, 4)
    pub, fan = SPSequence(4), FanOut()
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(6))
    sub = SCSequence()
    assert fan.add_and_get(sub) is sub
    assert fan.members == (sub,)
    assert sub.current() == 5
    assert sub.next() == -1
    publish_n(pub, ring, range(6, 10))
    assert pub.next() == -1  # the subscriber now holds the producer back
    assert drain(sub, ring) == [6, 7, 8, 9]


def test_a_subscriber_joining_behind_others_starts_at_the_producer() -> None:
    ring = RingQueue(Slot, 8)
    pub, early = SPSequence(8), SCSequence()
    fan = FanOut.to(early)
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(5))
    assert drain(early, ring, limit=2) == [0, 1]
    late = fan.add_and_get(SCSequence())
    assert late.current() == 4
    publish_n(pub, ring, range(5, 9))
    assert drain(late, ring) == [5, 6, 7, 8]
    assert drain(early, ring) == [2, 3, 4]  # what its last next() made available
    assert drain(early, ring) == [5, 6, 7, 8]


def test_remove_resets_the_member_and_it_no_longer_holds_the_producer() -> None:
    ring = RingQueue(Slot, 4)
    pub, fast, slow = SPSequence(4), SCSequence(), SCSequence()
    fan = FanOut.to(fast).and_(slow)
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(4))
    assert drain(fast, ring) == [0, 1, 2, 3]
    assert slow.next() == 0
    assert pub.next() == -1
    fan.remove(slow)
    assert fan.members == (fast,)
    assert slow.current() == -1
    assert not slow.linked
    with pytest.raises(GraphError, match="is not part of a closed graph"):
        slow.next()
    with pytest.raises(CursorError):
        slow.done(0)
    assert pub.next() == 4
    with pytest.raises(GraphError, match="is not a member of this FanOut"):
        fan.remove(slow)


def test_a_removed_member_can_rejoin_at_the_new_position() -> None:
    ring = RingQueue(Slot, 4)
    pub, stay, hop = SPSequence(4), SCSequence(), SCSequence()
    fan = FanOut.to(stay).and_(hop)
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(3))
    assert drain(hop, ring) == [0, 1, 2]
    fan.remove(hop)
    publish_n(pub, ring, range(3, 4))
    assert drain(stay, ring) == [0, 1, 2, 3]
    publish_n(pub, ring, range(4, 6))
    assert fan.add_and_get(hop) is hop
    assert hop.current() == 5
    publish_n(pub, ring, range(6, 8))
    assert drain(hop, ring) == [6, 7]
    assert drain(stay, ring) == [4, 5, 6, 7]
    assert fan.members == (stay, hop)


def test_removing_the_last_member_frees_the_producer() -> None:
    ring = RingQueue(Slot, 2)
    pub, only = SPSequence(2), SCSequence()
    fan = FanOut.to(only)
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(2))
    assert pub.next() == -1
    fan.remove(only)
    publish_n(pub, ring, range(2, 20))


def test_nested_fanouts_and_chains_as_members() -> None:
    # a.then(FanOut.to(FanOut.to(b).and_(c)).and_(d.then(e))).then(f).then(a)
    ring = RingQueue(Slot, 4)
    a = SPSequence(4)
    b, c, d, e, f = (SCSequence() for _ in range(5))
    inner = FanOut.to(b).and_(c)
    outer = FanOut.to(inner).and_(d.then(e))
    assert outer.members == (inner, e)
    a.then(outer).then(f).then(a)

    publish_n(a, ring, range(4))
    assert a.next() == -1
    assert e.next() == -1  # e waits on d
    assert drain(d, ring, limit=3) == [0, 1, 2]
    assert drain(e, ring) == [0, 1, 2]
    assert drain(d, ring) == [3]
    assert f.next() == -1  # b and c have read nothing
    assert drain(b, ring) == [0, 1, 2, 3]
    assert f.next() == -1
    assert drain(c, ring, limit=1) == [0]
    assert drain(f, ring) == [0]  # the slowest of b, c and e is c at 0
    assert drain(c, ring) == [1, 2, 3]
    assert drain(f, ring) == [1, 2]  # now e at 2 is the slowest
    assert drain(e, ring) == [3]
    assert drain(f, ring) == [3]
    assert a.next() == 4
    assert a.available() == 8


def test_a_subscriber_can_join_a_nested_fanout_while_it_runs() -> None:
    ring = RingQueue(Slot, 4)
    pub, b, late = SPSequence(4), SCSequence(), SCSequence()
    inner = FanOut.to(b)
    pub.then(FanOut.to(inner)).then(pub)
    publish_n(pub, ring, range(2))
    inner.add_and_get(late)
    publish_n(pub, ring, range(2, 4))
    assert drain(late, ring) == [2, 3]
    assert drain(b, ring) == [0, 1, 2, 3]
    publish_n(pub, ring, range(4, 8))
    assert pub.next() == -1
    assert drain(late, ring) == [4, 5, 6, 7]
    assert pub.next() == -1  # b still holds the slots of 4..7
    assert drain(b, ring) == [4, 5, 6, 7]
    assert pub.next() == 8


def test_a_removed_chain_member_stops_holding_the_join() -> None:
    ring = RingQueue(Slot, 4)
    pub, b, d, e, join = SPSequence(4), SCSequence(), SCSequence(), SCSequence(), SCSequence()
    fan = FanOut.to(b).and_(d.then(e))
    pub.then(fan).then(join).then(pub)
    publish_n(pub, ring, range(2))
    assert drain(b, ring) == [0, 1]
    assert join.next() == -1
    fan.remove(e)
    assert not d.linked and not e.linked
    assert drain(join, ring) == [0, 1]


def test_a_worker_pool_can_be_one_fanout_member() -> None:
    ring = RingQueue(Slot, 4)
    pub, audit, pool = SPSequence(4), SCSequence(), MCSequence(4)
    pub.then(FanOut.to(audit).and_(pool)).then(pub)
    publish_n(pub, ring, range(4))
    claims = [pool.next() for _ in range(4)]
    assert claims == [0, 1, 2, 3]
    assert drain(audit, ring) == [0, 1, 2, 3]
    pool.done(1)
    assert pub.next() == -1  # cursor 0 is still claimed by a worker
    pool.done(0)
    assert pub.next() == 4
    assert pub.available() == 6


def test_a_worker_pool_can_join_a_running_fanout_and_rejoin_after_leaving() -> None:
    ring = RingQueue(Slot, 4)
    pub, fan, pool = SPSequence(4), FanOut(), MCSequence(4)
    pub.then(fan).then(pub)
    publish_n(pub, ring, range(6))
    for rounds in range(2):
        assert fan.add_and_get(pool) is pool
        assert pool.current() == pub.current()
        start = pub.current() + 1
        publish_n(pub, ring, range(start, start + 4))
        assert pub.next() == -1  # the pool holds the producer back from here on
        claims = [pool.next() for _ in range(5)]
        assert claims == [*range(start, start + 4), -1]
        assert [ring.get(c).value for c in claims[:4]] == list(range(start, start + 4))
        for cursor in reversed(claims[:4]):
            pool.done(cursor)
        assert pub.next() == start + 4
        fan.remove(pool)
        assert pool.current() == -1
        publish_n(pub, ring, range(start + 4, start + 4 + 5 * rounds + 1))


def test_a_late_subscriber_behind_a_multi_producer_skips_no_pending_claim() -> None:
    # Regression: the subscriber started at the producer's current(), its last *claim*.
    # As the only member it then let the producer claim cursor 4 (slot 0) while cursor 0
    # was still being written, and done(0) failed with CursorError.
    ring = RingQueue(Slot, 4)
    pub, fan = MPSequence(4), FanOut()
    pub.then(fan).then(pub)
    pending = pub.next()
    assert pending == 0
    sub = fan.add_and_get(SCSequence())
    assert sub.current() == -1  # nothing was published when it joined
    claims = [pub.next() for _ in range(4)]
    assert claims == [1, 2, 3, -1]  # no claim of a slot still being written
    for cursor in (*claims[:3], pending):
        ring.get(cursor).write(cursor, cursor)
        pub.done(cursor)
    assert drain(sub, ring) == [0, 1, 2, 3]


def test_a_late_subscriber_of_a_second_fanout_waits_for_the_first() -> None:
    # Regression: a member of a FanOut behind another started at the producer's position
    # and so let the producer lap slots the first FanOut's members had not read.
    ring = RingQueue(Slot, 4)
    pub, first = SPSequence(4), SCSequence()
    second = FanOut()
    pub.then(FanOut.to(first)).then(second).then(pub)
    publish_n(pub, ring, range(4))
    assert pub.next() == -1
    late = second.add_and_get(SCSequence())
    assert pub.next() == -1  # first has read nothing yet
    assert late.next() == -1  # and late reads only what first released
    assert drain(first, ring, limit=2) == [0, 1]
    assert drain(late, ring) == [0, 1]
    assert drain(first, ring) == [2, 3]
    assert drain(late, ring) == [2, 3]
    publish_n(pub, ring, range(4, 8))
    assert drain(first, ring) == [4, 5, 6, 7]
    assert drain(late, ring) == [4, 5, 6, 7]


def test_repr_lists_the_members() -> None:
    b, c = SCSequence(), SCSequence(5)
    assert repr(FanOut.to(b).and_(c)) == "FanOut(SCSequence(current=-1), SCSequence(current=5))"
    assert repr(FanOut()) == "FanOut()"
