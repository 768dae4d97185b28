"""The client's books: every recorded call ends up sent or dropped, and says why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Why an item was dropped. Each reason is counted separately.
DROP_REASONS = (
    "queue_full",  # overflow="drop_newest": the newest item was refused
    "queue_evicted",  # overflow="drop_oldest": the oldest item made room
    "block_timeout",  # overflow="block": no room within the timeout
    "context_limit",  # too many distinct contexts in one aggregation interval
    "invalid",  # could not be encoded (e.g. a tag or set value the format forbids)
    "too_large",  # one line larger than a packet
    "transport",  # the packet holding it could not be written
    "closed",  # recorded after close(), or still queued when close() gave up
)


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of a :class:`~conveyor.Client`'s books.

    ``recorded == sent + sum(dropped.values()) + pending`` at every snapshot; after
    ``flush()`` returns True, ``pending`` is 0 for what was recorded before it.
    ``recorded`` counts calls (a sampled-out call is not recorded); ``sent`` counts
    calls whose data reached the transport, inside an aggregate or as its own line.
    ``sender_rounds`` counts the sender's rounds of work: under the GIL each takes its
    time from the application's threads, so few is good (docs/client.md, "The tail").
    """

    recorded: int
    sent: int
    dropped: Mapping[str, int]
    pending: int
    queue_depth: int
    queue_capacity: int
    contexts: int
    packets_sent: int
    bytes_sent: int
    flushes: int
    sender_rounds: int
    sender_running: bool
    destination: str
    dropped_total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dropped_total", sum(self.dropped.values()))
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))
