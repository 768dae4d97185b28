"""Graph rules: then() returns its argument, a graph is a cycle through exactly one
producer, and nothing hands out cursors before its cycle is closed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor.ring import (
    FanOut,
    GraphError,
    MCSequence,
    MPSequence,
    SCSequence,
    Sequence,
    SPSequence,
)

CLOSE_FIRST = "is not part of a closed graph"


def test_then_returns_its_argument_so_chains_read_left_to_right() -> None:
    pub, a, b = SPSequence(8), SCSequence(), SCSequence()
    assert pub.then(a) is a
    assert a.then(b) is b
    assert b.then(pub) is pub
    fan = FanOut()
    pub2 = SPSequence(8)
    assert pub2.then(fan) is fan
    assert fan.then(pub2) is pub2


def test_linked_reports_whether_a_node_waits_on_another() -> None:
    pub, sub = SPSequence(8), SCSequence()
    assert not pub.linked and not sub.linked
    pub.then(sub)
    assert sub.linked and not pub.linked
    sub.then(pub)
    assert pub.linked


@pytest.mark.parametrize("kind", ["sp", "mp"])
def test_a_producer_raises_on_its_very_first_next_until_the_cycle_is_closed(kind: str) -> None:
    pub: Sequence = SPSequence(4) if kind == "sp" else MPSequence(4)
    with pytest.raises(GraphError, match=CLOSE_FIRST):
        pub.next()
    sub = pub.then(SCSequence())
    with pytest.raises(GraphError, match=CLOSE_FIRST):
        pub.next()
    with pytest.raises(GraphError, match=CLOSE_FIRST):
        pub.next_blocking(timeout=5)
    sub.then(pub)
    assert pub.next() == 0


def test_a_producer_behind_an_open_chain_raises() -> None:
    pub = SPSequence(4)
    pub.then(SCSequence()).then(SCSequence())
    with pytest.raises(GraphError, match=rf"SPSequence\(current=-1\) {CLOSE_FIRST}"):
        pub.next()


@pytest.mark.parametrize(
    "make", [SCSequence, lambda: MCSequence(4)], ids=["SCSequence", "MCSequence"]
)
def test_a_consumer_waiting_on_nothing_raises(make: Callable[[], Sequence]) -> None:
    consumer = make()
    with pytest.raises(GraphError, match=CLOSE_FIRST):
        consumer.next()
    with pytest.raises(GraphError, match=r"pub\.then\(sub\)\.then\(pub\)"):
        consumer.next_blocking(timeout=5)


def test_a_consumer_of_a_fanout_that_waits_on_nothing_raises() -> None:
    sub = SCSequence()
    FanOut.to(sub)
    with pytest.raises(GraphError, match=CLOSE_FIRST):
        sub.next()


def test_then_of_itself_is_rejected() -> None:
    pub = SPSequence(8)
    with pytest.raises(GraphError, match=r"\.then\(\) of itself"):
        pub.then(pub)
    fan = FanOut()
    with pytest.raises(GraphError, match=r"\.then\(\) of itself"):
        fan.then(fan)


def test_then_takes_only_nodes() -> None:
    with pytest.raises(TypeError, match="then\\(\\) takes a sequence or a FanOut, not int"):
        SPSequence(8).then(3)  # type: ignore[type-var]


def test_a_closed_cycle_without_a_producer_is_rejected() -> None:
    a, b, c = SCSequence(), SCSequence(), MCSequence(8)
    a.then(b).then(c)
    with pytest.raises(GraphError, match="has no producer; a graph starts and ends"):
        c.then(a)


def test_a_closed_cycle_with_two_producers_is_rejected() -> None:
    p1, p2 = SPSequence(8), MPSequence(8)
    last = p1.then(SCSequence()).then(p2).then(SCSequence())
    with pytest.raises(GraphError, match=r"has 2 producers.*use MPSequence"):
        last.then(p1)


def test_two_producers_around_a_fanout_are_rejected() -> None:
    p1, p2 = SPSequence(8), SPSequence(8)
    p1.then(FanOut.to(SCSequence())).then(p2)
    with pytest.raises(GraphError, match="has 2 producers"):
        p2.then(p1)


def test_a_node_that_already_waits_on_another_cannot_be_relinked() -> None:
    pub, other, sub = SPSequence(8), SCSequence(), SCSequence()
    pub.then(sub)
    with pytest.raises(GraphError, match=r"SCSequence\(current=-1\) already waits on SPSequence"):
        other.then(sub)


def test_a_second_then_from_the_same_node_is_a_branch_and_needs_a_fanout() -> None:
    pub, a, b = SPSequence(8), SCSequence(), SCSequence()
    pub.then(a)
    with pytest.raises(
        GraphError, match=r"already leads to .*branch with FanOut\.to\(a\)\.and_\(b\)"
    ):
        pub.then(b)
    with pytest.raises(GraphError, match="already leads to"):
        pub.then(a)  # the same link twice is a branch too


def test_a_producer_cannot_be_a_fanout_member() -> None:
    with pytest.raises(GraphError, match="is a producer: a FanOut's members are consumers"):
        FanOut.to(SPSequence(8))
    fan = FanOut.to(SCSequence())
    with pytest.raises(GraphError, match="is a producer"):
        fan.and_(MPSequence(8))
    with pytest.raises(GraphError, match="is a producer"):
        fan.add_and_get(SPSequence(8))
    assert len(fan.members) == 1


def test_a_producer_cannot_hide_in_a_fanout_members_chain() -> None:
    # Regression: only the chain's tail was checked, so FanOut.to(p2.then(a)) slipped a
    # second producer into a graph whose cycle check never visits it.
    p2, a = SPSequence(8), SCSequence()
    p2.then(a)
    with pytest.raises(GraphError, match="a FanOut's members are consumers"):
        FanOut.to(a)
    x, p3, y = SCSequence(), MPSequence(8), SCSequence()
    x.then(p3).then(y)
    fan = FanOut()
    with pytest.raises(GraphError, match="a FanOut's members are consumers"):
        fan.and_(y)
    assert fan.members == ()


def test_fanout_membership_misuse() -> None:
    sub = SCSequence()
    fan = FanOut.to(sub)
    with pytest.raises(GraphError, match="is already a member of this FanOut"):
        fan.and_(sub)
    with pytest.raises(GraphError, match="a FanOut cannot be its own member"):
        fan.and_(fan)
    with pytest.raises(TypeError, match="a FanOut member must be a sequence or a FanOut"):
        fan.and_("sub")  # type: ignore[arg-type]
    with pytest.raises(
        GraphError, match=r"SCSequence\(current=-1\) is not a member of this FanOut"
    ):
        fan.remove(SCSequence())
    assert fan.members == (sub,)


def test_a_member_of_a_closed_graph_cannot_join_a_fanout() -> None:
    pub, sub = SPSequence(8), SCSequence()
    pub.then(sub).then(pub)
    with pytest.raises(GraphError, match="already part of a closed graph"):
        FanOut.to(sub)


def test_the_wait_argument_must_be_a_wait_strategy() -> None:
    with pytest.raises(TypeError, match="wait must be a WaitStrategy, not str"):
        SCSequence(wait="blocking")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wait must be a WaitStrategy, not int"):
        SPSequence(8, wait=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [SPSequence, MPSequence, MCSequence])
def test_sequence_capacities_follow_the_ring_rules(make: Callable[[int], Sequence]) -> None:
    with pytest.raises(ValueError, match=r"power of two.*try 4 or 8"):
        make(6)
    with pytest.raises(TypeError, match="capacity must be an int"):
        make(8.0)  # type: ignore[arg-type]


def test_consumer_start_positions_must_be_at_least_minus_one() -> None:
    with pytest.raises(ValueError, match="start must be >= -1, got -2"):
        SCSequence(-2)
    with pytest.raises(ValueError, match="start must be >= -1, got -5"):
        MCSequence(8, start=-5)
    assert SCSequence(41).current() == 41
    assert MCSequence(8, start=41).current() == 41
