"""`FanOut`: branch a graph into parallel subscribers, and join them again.

``pub.then(FanOut.to(a).and_(b)).then(reclaim).then(pub)``: ``a`` and ``b`` each see
every item ``pub`` publishes; ``reclaim`` sees an item once both released it. An empty
``FanOut()`` is a placeholder for subscribers that come and go while the pipeline runs:
``add_and_get`` and ``remove`` are safe from any thread at any time.

The subscriber list is an immutable tuple replaced whole under a lock (copy on write):
readers on the hot path (``_available_index``, ``_signal``) read the attribute once and
iterate a snapshot that cannot change under them. Reading one attribute is atomic in
both GIL and free-threaded builds; writers are serialised by the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from ._errors import GraphError
from ._graph import Node, chain_of

S = TypeVar("S", bound=Node)


class _Member:
    """One subscriber: the chain from its head (which waits on the fan-out's upstream) to
    its tail (which the join waits on)."""

    __slots__ = ("chain", "head", "tail")

    def __init__(self, chain: tuple[Node, ...]) -> None:
        self.chain = chain
        self.head = chain[0]
        self.tail = chain[-1]


class FanOut(Node):
    """A branch point and a join: every member sees every item; downstream waits on the
    slowest member. Members are consumer sequences, chains of them, or other FanOuts.

    Thread safety: ``and_``, ``add_and_get`` and ``remove`` may be called from any
    thread while producers and consumers run. A subscriber must not consume before
    ``add_and_get`` returns (joining moves it to the producer's current position), and
    must stop consuming before it is removed.
    """

    __slots__ = ("_lock", "_members", "_wakers")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._members: tuple[_Member, ...] = ()
        self._wakers: tuple[Callable[[], None], ...] = ()

    @classmethod
    def to(cls, node: Node) -> FanOut:
        """A new FanOut whose first member is ``node``."""
        return cls().and_(node)

    def and_(self, node: Node) -> FanOut:
        """Add ``node`` (``and`` is a Python keyword) and return this FanOut, for chaining."""
        self._add(node)
        return self

    def add_and_get(self, node: S) -> S:
        """Subscribe ``node`` while the pipeline runs and return it.

        It starts after the producer's current position (after the last published cursor
        for an MPSequence, after what the members released for a FanOut behind another):
        it sees only what is published from now on.
        """
        self._add(node)
        return node

    def remove(self, node: Node) -> None:
        """Unsubscribe ``node``; it is reset and can be added again later."""
        with self._lock:
            members = self._members
            kept = tuple(member for member in members if member.tail is not node)
            if len(kept) == len(members):
                raise GraphError(f"{node!r} is not a member of this FanOut")
            removed = next(member for member in members if member.tail is node)
            self._publish(kept)
        for member_node in removed.chain:
            member_node._unlink()
        # It may have been the slowest member: whoever waits on the join may go on now.
        self._wake()

    @property
    def members(self) -> tuple[Node, ...]:
        """The current subscribers (a snapshot)."""
        return tuple(member.tail for member in self._members)

    def current(self) -> int:
        return self._barrier.current()

    def _add(self, node: Node) -> None:
        if not isinstance(node, Node):
            raise TypeError(f"a FanOut member must be a sequence or a FanOut, not {node!r}")
        if node._is_producer:
            raise GraphError(f"{node!r} is a producer: a FanOut's members are consumers")
        with self._lock:
            if any(member.tail is node for member in self._members):
                raise GraphError(f"{node!r} is already a member of this FanOut")
            member = _Member(chain_of(node))
            if member.head is self or node is self:
                raise GraphError("a FanOut cannot be its own member")
            for link in member.chain:
                if link._is_producer:
                    raise GraphError(
                        f"{link!r} is a producer leading to {node!r}: a FanOut's members "
                        f"are consumers, and so are the chains leading to them"
                    )
            if self.linked:
                member.head._set_barrier(self._barrier)
                self._move_to_current(member)
            if self._downstream is not None:
                member.tail._set_downstream(self._downstream)
            self._publish((*self._members, member))
            if self.linked:
                # Catch up with what was published meanwhile: until this point the
                # producer did not wait for the new member, so it may have lapped it.
                self._move_to_current(member)
        # Whoever the member's first position held back meanwhile may go on now.
        self._wake()

    def _publish(self, members: tuple[_Member, ...]) -> None:
        self._members = members
        self._wakers = tuple(member.head._signal_function() for member in members)

    def _move_to_current(self, member: _Member) -> None:
        # What the barrier has released, not its current(): a multi- sequence's current()
        # is its last claim (maybe not done yet) and a FanOut's is its producer's (maybe
        # not read by its members yet); a member starting beyond would let the producer
        # lap slots that are still in use.
        position = self._barrier._available_index(0)
        for node in member.chain:
            node._set_current(position)

    # -- Node ---------------------------------------------------------------------------

    def _available_index(self, lo: int) -> int:
        members = self._members
        if not members:
            # Nobody subscribed: nothing holds the producer back (pub-sub drop).
            return self._barrier._available_index(lo)
        lowest = members[0].tail._available_index(lo)
        for member in members[1:]:
            index = member.tail._available_index(lo)
            if index < lowest:
                lowest = index
        return lowest

    def _signal_function(self) -> Callable[[], None]:
        return self._signal

    def _signal(self) -> None:
        wakers = self._wakers
        if not wakers:
            # Nobody subscribed: the downstream waits on the upstream directly (see
            # _available_index), so pass the upstream's signal on.
            self._wake()
        for wake in wakers:
            wake()

    def _set_barrier(self, barrier: Node) -> None:
        with self._lock:
            self._barrier = barrier
            for member in self._members:
                member.head._set_barrier(barrier)

    def _set_downstream(self, node: Node | None) -> None:
        with self._lock:
            super()._set_downstream(node)
            for member in self._members:
                member.tail._set_downstream(node)

    def _set_current(self, value: int) -> None:
        for member in self._members:
            for node in member.chain:
                node._set_current(value)

    def _unlink(self) -> None:
        super()._unlink()
        for member in self._members:
            for node in member.chain:
                node._unlink()

    def __repr__(self) -> str:
        return f"FanOut({', '.join(repr(member.tail) for member in self._members)})"
