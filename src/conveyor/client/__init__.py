"""The DogStatsD client: :class:`Client`, its bound counters and its statistics."""

from ._books import DROP_REASONS, ClientStatistics
from ._client import BoundCounter, Client
from ._timed import Timed

__all__ = ["DROP_REASONS", "BoundCounter", "Client", "ClientStatistics", "Timed"]
