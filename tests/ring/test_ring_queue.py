"""RingQueue: capacity rules, one distinct slot per factory call, cursor masking."""

from __future__ import annotations

import pytest
from ring_support import Slot

from conveyor.ring import RingQueue


@pytest.mark.parametrize("capacity", [1, 2, 4, 8, 1024, 1 << 16])
def test_power_of_two_capacities_are_accepted(capacity: int) -> None:
    ring = RingQueue(Slot, capacity)
    assert ring.capacity == capacity
    assert repr(ring) == f"RingQueue(capacity={capacity})"


@pytest.mark.parametrize(
    ("capacity", "lower", "upper"),
    [(3, 2, 4), (6, 4, 8), (7, 4, 8), (12, 8, 16), (1000, 512, 1024), (0, 1, 2), (-8, 1, 2)],
)
def test_other_capacities_are_rejected_with_the_neighbouring_powers(
    capacity: int, lower: int, upper: int
) -> None:
    with pytest.raises(ValueError, match=rf"power of two.*got {capacity}; try {lower} or {upper}$"):
        RingQueue(Slot, capacity)


@pytest.mark.parametrize("capacity", [True, False, 8.0, "8", None])
def test_capacity_must_be_an_int(capacity: object) -> None:
    with pytest.raises(TypeError, match=f"capacity must be an int, not {type(capacity).__name__}"):
        RingQueue(Slot, capacity)  # type: ignore[arg-type]


def test_each_slot_is_made_by_its_own_factory_call() -> None:
    calls: list[Slot] = []

    def factory() -> Slot:
        slot = Slot()
        calls.append(slot)
        return slot

    ring = RingQueue(factory, 8)
    assert len(calls) == 8
    assert [ring.get(i) for i in range(8)] == calls
    assert len({id(ring.get(i)) for i in range(8)}) == 8


def test_a_factory_returning_a_shared_object_is_rejected() -> None:
    shared = Slot()
    with pytest.raises(ValueError, match="same object more than once"):
        RingQueue(lambda: shared, 4)


def test_a_factory_repeating_one_object_among_others_is_rejected() -> None:
    made = [Slot(), Slot(), Slot()]
    order = iter([made[0], made[1], made[2], made[1]])
    with pytest.raises(ValueError, match="every slot must be a distinct mutable object"):
        RingQueue(lambda: next(order), 4)


def test_capacity_one_is_allowed_and_shares_its_only_slot() -> None:
    ring = RingQueue(Slot, 1)
    assert ring.get(0) is ring.get(1) is ring.get(12345)


@pytest.mark.parametrize("cursor", [0, 5, 7, 8, 13, 1023, 2**31 + 3, 2**62 + 6, 2**100 + 1])
def test_get_masks_any_cursor(cursor: int) -> None:
    ring = RingQueue(Slot, 8)
    assert ring.get(cursor) is ring.get(cursor % 8)
    assert ring.get(cursor) is ring.get(cursor + 8 * 1000)


def test_slots_are_reused_lap_after_lap() -> None:
    ring = RingQueue(Slot, 4)
    for cursor in range(40):
        ring.get(cursor).write(cursor, cursor * 10)
    assert [(ring.get(i).stamp, ring.get(i).value) for i in range(4)] == [
        (36, 360),
        (37, 370),
        (38, 380),
        (39, 390),
    ]
