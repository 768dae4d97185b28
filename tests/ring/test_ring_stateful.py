"""Hypothesis state machines: each kind of sequence against a plain-Python model.

Single-threaded: one thread plays every role, so each step is checked exactly against
the model (what was published, where every consumer is, which cursors are held).
Invariants throughout: a producer never gets a cursor whose slot a consumer has not
released, consumers read exactly what was published and in order, and ``done()`` raises
CursorError exactly when the model says the cursor is not held.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
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

CAPACITIES = st.sampled_from([4, 2, 8, 1])
BATCH = st.integers(1, 9)
#: done() cursors relative to the caller's position (often held, else below, at or
#: beyond), or ABSURD ones taken as they are: no one ever holds those.
ABSURD = (-(10**18), -(10**6), 10**9, 2**64 + 1)
OFFSET = st.one_of(
    st.integers(1, 2), st.integers(1, 8), st.integers(-3, 11), st.sampled_from(ABSURD)
)
#: An optional done() to finish a step with.
THEN = st.none() | OFFSET
#: For multi- sequences, relative to the last claim: a lap and more below it, and above.
MULTI_OFFSET = st.one_of(st.integers(-18, 2), st.sampled_from(ABSURD))

PUBLISH_ONLY = "a producer may publish only cursors after"
RELEASE_ONLY = "a consumer may release only cursors after"
NOT_CLAIMED = "not a cursor claimed by next\\(\\) and not yet done"


def target(position: int, offset: int) -> int:
    """The cursor an OFFSET draw names, relative to ``position``."""
    return offset if offset in ABSURD else position + offset


#: Hypothesis disables a random subset of the rules in each example (swarm testing), so
#: each machine has few rules and many examples.
SETTINGS = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class RingModel(RuleBasedStateMachine):
    """What every machine shares: the ring, the published values, slot checks."""

    cap: int
    ring: RingQueue[Slot]
    published: list[int]  # published[c] is the value published at cursor c
    tokens: int

    def start_ring(self, capacity: int) -> None:
        self.cap = capacity
        self.ring = RingQueue(Slot, capacity)
        self.published = []
        self.tokens = 0

    @property
    def top(self) -> int:
        """The last published cursor."""
        return len(self.published) - 1

    def fresh(self) -> int:
        self.tokens += 1
        return self.tokens * 1000

    def write(self, cursor: int, gate: int) -> int:
        """Write a fresh value at ``cursor``; ``gate`` is the model's slowest consumer."""
        assert cursor - self.cap <= gate, (
            f"producer got cursor {cursor}, whose slot still holds {cursor - self.cap}, "
            f"but consumers released only up to {gate}"
        )
        value = self.fresh()
        self.ring.get(cursor).write(cursor, value)
        return value

    def check(self, cursor: int, expected: int) -> None:
        """The slot holds what was written for ``cursor`` (not a later lap)."""
        slot = self.ring.get(cursor)
        assert slot.stamp == cursor, f"slot of {cursor} overwritten by cursor {slot.stamp}"
        assert slot.value == expected, f"cursor {cursor}: read {slot.value}, expected {expected}"


class SPProducer(RingModel):
    """An SP producer in two phases: claim and write part of a batch, publish later."""

    pub: SPSequence
    written: dict[int, int]  # written but not yet published

    def gate(self) -> int:
        """The model's position of the consumer(s) the producer waits on."""
        raise NotImplementedError

    def start_producer(self) -> None:
        self.pub = SPSequence(self.cap)
        self.written = {}

    def claim(self) -> int:
        """pub.next(), checked: the next cursor exactly when the model has a free slot."""
        cursor = self.pub.next()
        expected = self.top + 1 if self.top + 1 - self.cap <= self.gate() else -1
        assert cursor == expected
        assert self.pub.next() == cursor  # idempotent until done()
        if cursor >= 0:
            assert cursor < self.pub.available() <= self.gate() + self.cap + 1
        return cursor

    @rule(k=BATCH, then=THEN)
    def produce(self, k: int, then: int | None) -> None:
        """Claim and write up to ``k`` more slots; publish some of them, or not yet."""
        if self.claim() >= 0:
            hi = self.pub.available()
            first = max(self.written, default=self.top) + 1
            for c in range(first, min(hi, first + k)):
                self.written[c] = self.write(c, self.gate())
        if then is not None:
            self.publish(then)

    @rule(offset=OFFSET)
    def publish(self, offset: int) -> None:
        """done(cursor): publish what was written up to it (writing the rest first)."""
        self.claim()
        top = self.top
        cursor = target(top, offset)
        hi = self.pub.available()
        if top < cursor < hi:
            for c in range(top + 1, cursor + 1):
                if c not in self.written:
                    self.written[c] = self.write(c, self.gate())
            self.pub.done(cursor)
            self.published.extend(self.written.pop(c) for c in range(top + 1, cursor + 1))
        else:
            with pytest.raises(CursorError, match=PUBLISH_ONLY):
                self.pub.done(cursor)
        assert self.pub.current() == self.top

    @invariant()
    def producer_holds_only_released_slots(self) -> None:
        assert self.pub.current() == self.top
        assert self.top <= self.gate() + self.cap
        assert self.pub.available() <= self.gate() + self.cap + 1


class SCReader:
    """The model of one SC consumer: its position, and how far it has read."""

    def __init__(self, seq: SCSequence, position: int) -> None:
        self.seq = seq
        self.position = position  # released up to here
        self.read_to = position  # read (and checked) up to here

    def next(self, model: RingModel) -> int:
        """seq.next(), checked: the next cursor exactly when the model has published it."""
        cursor = self.seq.next()
        expected = self.position + 1 if self.position + 1 <= model.top else -1
        assert cursor == expected
        assert self.seq.next() == cursor  # idempotent until done()
        if cursor >= 0:
            assert cursor < self.seq.available() <= model.top + 1
        return cursor

    def read(self, model: RingModel, k: int, then: int | None) -> None:
        """Read and check up to ``k`` more items; release some of them, or not yet."""
        if self.next(model) >= 0:
            hi = self.seq.available()
            first = self.read_to + 1
            for c in range(first, min(hi, first + k)):
                model.check(c, model.published[c])
                self.read_to = c
        if then is not None:
            self.release(model, then)

    def release(self, model: RingModel, offset: int) -> None:
        """done(cursor): release what was read up to it (reading the rest first)."""
        self.next(model)
        cursor = target(self.position, offset)
        hi = self.seq.available()
        if self.position < cursor < hi:
            # Check again what was read earlier: no producer may have overwritten it since.
            for c in range(self.position + 1, cursor + 1):
                model.check(c, model.published[c])
            self.seq.done(cursor)
            self.position = cursor
            self.read_to = max(self.read_to, cursor)
        else:
            with pytest.raises(CursorError, match=RELEASE_ONLY):
                self.seq.done(cursor)
        assert self.seq.current() == self.position

    def drain(self, model: RingModel) -> None:
        while (cursor := self.seq.next()) >= 0:
            hi = self.seq.available()
            for c in range(cursor, hi):
                model.check(c, model.published[c])
            self.seq.done(hi - 1)
            self.position = hi - 1
        assert self.position == model.top


# -- SP -> SC ------------------------------------------------------------------------------


class SPSCMachine(SPProducer):
    sub: SCReader

    @initialize(capacity=CAPACITIES)
    def setup(self, capacity: int) -> None:
        self.start_ring(capacity)
        self.start_producer()
        seq = SCSequence()
        self.pub.then(seq).then(self.pub)
        self.sub = SCReader(seq, -1)

    def gate(self) -> int:
        return self.sub.position

    @rule(k=BATCH, then=THEN)
    def read(self, k: int, then: int | None) -> None:
        self.sub.read(self, k, then)

    @rule(offset=OFFSET)
    def release(self, offset: int) -> None:
        self.sub.release(self, offset)

    def teardown(self) -> None:
        if hasattr(self, "sub"):
            self.sub.drain(self)


def test_sp_sc_against_the_model() -> None:
    run_state_machine_as_test(SPSCMachine, settings=SETTINGS)


# -- MP -> SC ------------------------------------------------------------------------------


class MPSCMachine(RingModel):
    """An MP producer whose claims are done in any order, and its SC consumer."""

    pub: MPSequence
    sub: SCReader
    claimed: int  # the last claimed cursor
    pending: dict[int, int]  # claimed and written, not done
    finished: dict[int, int]  # done, beyond what is published (contiguously done)

    @initialize(capacity=CAPACITIES)
    def setup(self, capacity: int) -> None:
        self.start_ring(capacity)
        self.pub = MPSequence(capacity)
        seq = SCSequence()
        self.pub.then(seq).then(self.pub)
        self.sub = SCReader(seq, -1)
        self.claimed = -1
        self.pending = {}
        self.finished = {}

    @rule(finish=st.booleans())
    def claim(self, finish: bool = False) -> None:
        cursor = self.pub.next()
        expected = self.claimed + 1 if self.claimed + 1 - self.cap <= self.sub.position else -1
        assert cursor == expected
        if cursor >= 0:
            self.pending[cursor] = self.write(cursor, self.sub.position)
            self.claimed = cursor
            if finish:
                self.finish(cursor)

    def finish(self, cursor: int) -> None:
        value = self.pending.pop(cursor)
        self.check(cursor, value)  # nobody wrote to it while it was claimed
        self.pub.done(cursor)
        self.finished[cursor] = value
        while self.top + 1 in self.finished:  # the consumer may read a done prefix
            self.published.append(self.finished.pop(self.top + 1))

    @rule(i=st.integers(0, 7))
    def done_a_claim(self, i: int) -> None:
        if not self.pending:
            self.claim()
        if self.pending:
            self.finish(sorted(self.pending)[i % len(self.pending)])

    @rule(offset=MULTI_OFFSET)
    def done_any(self, offset: int) -> None:
        cursor = target(self.claimed, offset)
        if cursor in self.pending:
            self.finish(cursor)
        else:
            with pytest.raises(CursorError, match=NOT_CLAIMED):
                self.pub.done(cursor)

    @rule(k=BATCH, then=THEN)
    def read(self, k: int, then: int | None) -> None:
        self.sub.read(self, k, then)

    @rule(offset=OFFSET)
    def release(self, offset: int) -> None:
        self.sub.release(self, offset)

    @invariant()
    def positions(self) -> None:
        assert self.pub.current() == self.claimed
        assert self.sub.position <= self.top <= self.claimed <= self.sub.position + self.cap

    def teardown(self) -> None:
        if hasattr(self, "pending"):
            for cursor in sorted(self.pending, reverse=True):
                self.finish(cursor)
            self.sub.drain(self)


def test_mp_sc_against_the_model() -> None:
    run_state_machine_as_test(MPSCMachine, settings=SETTINGS)


# -- SP -> MC ------------------------------------------------------------------------------


class SPMCMachine(SPProducer):
    """MC consumers (a worker pool) behind an SP: claims released in any order."""

    pool: MCSequence
    claims: list[int]  # every cursor the pool handed out, in order
    held: set[int]  # claimed, not done
    released: set[int]  # done beyond the pool's contiguously done prefix
    frontier: int  # everything up to here is done

    @initialize(capacity=CAPACITIES)
    def setup(self, capacity: int) -> None:
        self.start_ring(capacity)
        self.start_producer()
        self.pool = MCSequence(capacity)
        self.pub.then(self.pool).then(self.pub)
        self.claims = []
        self.held = set()
        self.released = set()
        self.frontier = -1

    def gate(self) -> int:
        return self.frontier

    @rule(finish=st.booleans())
    def take(self, finish: bool = False) -> None:
        last = self.claims[-1] if self.claims else -1
        cursor = self.pool.next()
        assert cursor == (last + 1 if last + 1 <= self.top else -1)
        if cursor >= 0:
            self.check(cursor, self.published[cursor])
            self.claims.append(cursor)
            self.held.add(cursor)
            if finish:
                self.finish(cursor)

    def finish(self, cursor: int) -> None:
        self.held.remove(cursor)
        self.check(cursor, self.published[cursor])  # again, after "processing"
        self.pool.done(cursor)
        self.released.add(cursor)
        while self.frontier + 1 in self.released:
            self.released.remove(self.frontier + 1)
            self.frontier += 1

    @rule(i=st.integers(0, 7))
    def done_a_claim(self, i: int) -> None:
        if not self.held:
            self.take()
        if self.held:
            self.finish(sorted(self.held)[i % len(self.held)])

    @rule(offset=MULTI_OFFSET)
    def done_any(self, offset: int) -> None:
        cursor = target(self.claims[-1] if self.claims else -1, offset)
        if cursor in self.held:
            self.finish(cursor)
        else:
            with pytest.raises(CursorError, match=NOT_CLAIMED):
                self.pool.done(cursor)

    @invariant()
    def each_cursor_is_claimed_once_in_order(self) -> None:
        assert self.claims == list(range(len(self.claims)))
        assert self.pool.current() == len(self.claims) - 1
        assert self.frontier <= len(self.claims) - 1 <= self.top


def test_sp_mc_against_the_model() -> None:
    run_state_machine_as_test(SPMCMachine, settings=SETTINGS)


# -- SP -> FanOut (-> join) ------------------------------------------------------------------

SUBSCRIBER = st.integers(0, 2)


class FanOutMachine(SPProducer):
    """A FanOut placeholder whose subscribers join and leave between any two steps."""

    WITH_JOIN: ClassVar[bool] = False

    fan: FanOut
    subs: list[SCSequence]
    readers: dict[int, SCReader]  # the members, by subscriber index, in joining order
    join: SCReader

    @initialize(capacity=CAPACITIES)
    def setup(self, capacity: int) -> None:
        self.start_ring(capacity)
        self.start_producer()
        self.fan = FanOut()
        self.subs = [SCSequence() for _ in range(3)]
        self.readers = {}
        if self.WITH_JOIN:
            join = SCSequence()
            self.pub.then(self.fan).then(join).then(self.pub)
            self.join = SCReader(join, -1)
        else:
            self.pub.then(self.fan).then(self.pub)

    def slowest(self) -> int:
        """What the join (or, without one, the producer) may pass: the slowest member, or
        with nobody subscribed the producer itself."""
        return min((r.position for r in self.readers.values()), default=self.top)

    def gate(self) -> int:
        return self.join.position if self.WITH_JOIN else self.slowest()

    @rule(i=SUBSCRIBER)
    def subscribe(self, i: int) -> None:
        sub = self.subs[i]
        if i in self.readers:
            with pytest.raises(GraphError, match="is already a member of this FanOut"):
                self.fan.add_and_get(sub)
            return
        assert self.fan.add_and_get(sub) is sub
        assert sub.current() == self.top  # sees nothing published before it joined
        self.readers[i] = SCReader(sub, self.top)

    @rule(i=SUBSCRIBER)
    def unsubscribe(self, i: int) -> None:
        sub = self.subs[i]
        if i not in self.readers:
            with pytest.raises(GraphError, match="is not a member of this FanOut"):
                self.fan.remove(sub)
            return
        self.fan.remove(sub)
        del self.readers[i]
        assert sub.current() == -1
        assert not sub.linked

    @rule(i=SUBSCRIBER, k=BATCH, then=THEN)
    def read(self, i: int, k: int, then: int | None) -> None:
        reader = self.readers.get(i)
        if reader is None:
            with pytest.raises(GraphError, match="is not part of a closed graph"):
                self.subs[i].next()
        else:
            reader.read(self, k, then)

    @rule(i=SUBSCRIBER, offset=OFFSET)
    def release(self, i: int, offset: int) -> None:
        reader = self.readers.get(i)
        if reader is None:
            with pytest.raises(CursorError, match=RELEASE_ONLY):
                self.subs[i].done(max(0, offset))
        else:
            reader.release(self, offset)

    @precondition(lambda self: self.WITH_JOIN)
    @rule(k=BATCH)
    def join_reads(self, k: int) -> None:
        """The join reads and releases up to ``k`` items in one go."""
        # The join reads what every member released: the model's "published" for it is
        # capped by the slowest member.
        cursor = self.join.seq.next()
        expected = self.join.position + 1 if self.join.position + 1 <= self.slowest() else -1
        assert cursor == expected
        if cursor >= 0:
            hi = self.join.seq.available()
            assert cursor < hi <= self.slowest() + 1
            last = min(hi, cursor + k) - 1
            for c in range(cursor, last + 1):
                self.check(c, self.published[c])
            self.join.seq.done(last)
            self.join.position = last

    @invariant()
    def members_in_joining_order(self) -> None:
        assert self.fan.members == tuple(self.subs[i] for i in self.readers)
        for reader in self.readers.values():
            assert reader.seq.current() == reader.position
            assert self.gate() <= reader.position <= self.top
        if self.WITH_JOIN:
            assert self.join.seq.current() == self.join.position <= self.slowest()

    def teardown(self) -> None:
        if hasattr(self, "readers"):
            for reader in self.readers.values():
                reader.drain(self)


class FanOutJoinMachine(FanOutMachine):
    """The same, with a join sequence behind the FanOut: pub -> fan -> join -> pub."""

    WITH_JOIN = True


def test_fanout_subscribers_against_the_model() -> None:
    run_state_machine_as_test(FanOutMachine, settings=SETTINGS)


def test_fanout_with_a_join_against_the_model() -> None:
    run_state_machine_as_test(FanOutJoinMachine, settings=SETTINGS)
