"""The graph every sequence and fan-out is a node of.

``a.then(b)`` makes ``b`` wait on ``a`` (``a`` is ``b``'s *barrier*) and makes ``a``
wake ``b`` each time it moves (``b`` is ``a``'s *downstream*). A valid graph is a cycle
that starts and ends at one producer sequence: the loop-back is what stops the
producer from overwriting slots that consumers have not released yet.

Waking follows the Disruptor's rule rather than QuestDB's: a node signals the node
that waits on it (its downstream), so blocking waits are correct in chains of any
length, not only in two-node loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ._errors import GraphError

N = TypeVar("N", bound="Node")


def _ignore() -> None:
    return None


class Node:
    """A node of a sequence graph: a sequence or a :class:`FanOut`."""

    __slots__ = ("_barrier", "_downstream", "_wake")

    _is_producer = False
    _placeholder = False  # True only for Unlinked

    def __init__(self) -> None:
        self._barrier: Node = Unlinked(self)
        self._downstream: Node | None = None
        self._wake: Callable[[], None] = _ignore  # the downstream's signal, bound once

    # -- public ------------------------------------------------------------------------

    def then(self, node: N) -> N:
        """Make ``node`` wait on this one and return ``node``, so that chains read
        left to right: ``pub.then(sub).then(pub)``."""
        if not isinstance(node, Node):
            raise TypeError(f"then() takes a sequence or a FanOut, not {type(node).__name__}")
        if node is self:
            raise GraphError(f"{self!r}.then() of itself: a graph needs a producer and a consumer")
        if self._downstream is not None:
            raise GraphError(
                f"{self!r} already leads to {self._downstream!r}; branch with FanOut.to(a).and_(b)"
            )
        node._link_barrier(self)
        self._set_downstream(node)
        _check_cycle(node)
        return node

    def current(self) -> int:
        """This node's position: the last cursor it published, consumed or claimed."""
        raise NotImplementedError

    # -- the graph's internals ---------------------------------------------------------

    def _available_index(self, lo: int) -> int:
        """The highest cursor that nodes waiting on this one may use (>= ``lo - 1``)."""
        raise NotImplementedError

    def _signal_function(self) -> Callable[[], None]:
        """What the upstream node calls to wake this one."""
        raise NotImplementedError

    def _set_current(self, value: int) -> None:
        raise NotImplementedError

    def _link_barrier(self, barrier: Node) -> None:
        if self.linked and self._barrier is not barrier:
            raise GraphError(f"{self!r} already waits on {self._barrier!r}")
        self._set_barrier(barrier)

    def _set_barrier(self, barrier: Node) -> None:
        self._barrier = barrier

    def _set_downstream(self, node: Node | None) -> None:
        self._downstream = node
        self._wake = _ignore if node is None else node._signal_function()

    def _unlink(self) -> None:
        self._barrier = Unlinked(self)
        self._set_downstream(None)

    @property
    def linked(self) -> bool:
        """True once this node waits on another."""
        return not self._barrier._placeholder


class Unlinked(Node):
    """The barrier of a node not yet in a closed graph: asking it for cursors is an error."""

    __slots__ = ("_owner",)
    _placeholder = True

    def __init__(self, owner: Node) -> None:  # no super().__init__: it would recurse
        self._owner = owner

    def current(self) -> int:
        return -1

    def _available_index(self, lo: int) -> int:
        raise GraphError(
            f"{self._owner!r} is not part of a closed graph: link a cycle from the producer "
            f"back to itself, e.g. pub.then(sub).then(pub), before asking for cursors"
        )

    def _signal_function(self) -> Callable[[], None]:
        return _ignore

    def _set_current(self, value: int) -> None:
        return None

    def __repr__(self) -> str:
        return "<unlinked>"


def chain_of(tail: Node) -> tuple[Node, ...]:
    """The nodes from the head of ``tail``'s chain (the first without a barrier) to
    ``tail``, for joining a FanOut; raise if the chain is already a closed loop."""
    nodes = [tail]
    node = tail
    while node.linked:
        node = node._barrier
        if node in nodes:
            raise GraphError(f"{tail!r} is already part of a closed graph")
        nodes.append(node)
    nodes.reverse()
    return tuple(nodes)


def _check_cycle(start: Node) -> None:
    """If linking closed a cycle through ``start``, it must hold exactly one producer."""
    producers = []
    node: Node | None = start
    seen: list[Node] = []
    while node is not None and node not in seen:
        seen.append(node)
        if node._is_producer:
            producers.append(node)
        node = node._downstream
    if node is not start:
        return  # not closed (yet)
    if len(producers) != 1:
        found = "no producer" if not producers else f"{len(producers)} producers"
        raise GraphError(
            f"the cycle {' -> '.join(map(repr, seen))} has {found}; a graph starts and ends "
            f"at exactly one producer sequence (use MPSequence for many producing threads)"
        )
