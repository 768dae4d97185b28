"""`RingQueue`: the preallocated slots that sequences hand out cursors to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def check_capacity(capacity: int) -> int:
    """Return ``capacity`` if it is a positive power of two; raise ``ValueError`` otherwise."""
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
    if capacity < 1 or capacity & (capacity - 1):
        lower = 1 << (max(capacity, 1).bit_length() - 1)
        raise ValueError(
            f"capacity must be a power of two (cursors are masked, not divided), "
            f"got {capacity}; try {lower} or {lower * 2}"
        )
    return capacity


class RingQueue(Generic[T]):
    """A fixed array of mutable slots, indexed by cursors that never wrap.

    Every slot is made up front by one call of ``factory()`` and then reused: writers
    fill a slot in place, readers read it in place, and nothing is allocated per
    message. The queue coordinates nothing; which thread may touch which slot is
    decided by the sequences (see :class:`SPSequence` and friends).

    Thread safety: none of its own, by design. ``get()`` only reads an immutable list.
    """

    __slots__ = ("_mask", "_slots")

    def __init__(self, factory: Callable[[], T], capacity: int) -> None:
        check_capacity(capacity)
        slots = [factory() for _ in range(capacity)]
        if len({id(slot) for slot in slots}) != capacity:
            raise ValueError(
                "factory() returned the same object more than once: every slot must be "
                "a distinct mutable object (e.g. factory=MySlot, not lambda: shared)"
            )
        self._slots = slots
        self._mask = capacity - 1

    @property
    def capacity(self) -> int:
        """The number of slots (a power of two)."""
        return self._mask + 1

    def get(self, cursor: int) -> T:
        """Return the slot for ``cursor``; any cursor maps to a slot (it is masked)."""
        return self._slots[cursor & self._mask]

    def __repr__(self) -> str:
        return f"RingQueue(capacity={self.capacity})"
