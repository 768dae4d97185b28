"""`TransportStatistics`: a snapshot of what a transport has done since it was made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


def _no_errors() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Counters since the transport was made (or since the fork that made this process).

    * ``packets_sent`` / ``bytes_sent``: packets handed to the operating system in
      full, and their size as given to ``send()`` (framing bytes, the length prefix or
      the newline a stream adds, are not counted);
    * ``errors``: failed ``send()`` calls by :class:`TransportError` reason; a reason
      that never happened is absent. Every ``send()`` call that did not return counts
      exactly once, so ``sum(errors.values())`` is the number of packets dropped;
    * ``reconnects``: sockets opened after the first one (after an error, or because a
      stream's peer hung up).
    """

    packets_sent: int = 0
    bytes_sent: int = 0
    errors: Mapping[str, int] = field(default_factory=_no_errors)
    reconnects: int = 0

    def __post_init__(self) -> None:
        # A read-only copy: a snapshot must not change under its reader.
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))

    @property
    def errors_total(self) -> int:
        """The number of failed ``send()`` calls, whatever the reason."""
        return sum(self.errors.values())
