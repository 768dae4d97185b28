"""The codec's data types and errors.

:class:`Metric` is a :class:`~typing.NamedTuple` because the parser builds one per
line in the agent's ingestion loop (a NamedTuple is built four to ten times faster
than a frozen dataclass, which sets each field through ``object.__setattr__``);
:class:`Event`, :class:`ServiceCheck` and :class:`ParseResult` are rare enough to be
slotted dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal, NamedTuple

MetricType = Literal["c", "g", "ms", "h", "d", "s"]
"""A DogStatsD metric type: count, gauge, timer (``ms``, a histogram for the
Datadog agent), histogram, distribution, set."""

Priority = Literal["normal", "low"]
"""An event's priority; Datadog assumes ``"normal"`` when it is absent."""

AlertType = Literal["error", "warning", "info", "success"]
"""An event's alert type; Datadog assumes ``"info"`` when it is absent."""

UDP_MAX_DATAGRAM = 1432
"""Largest datagram a client should send over UDP: an Ethernet MTU of 1514 bytes minus
the Ethernet, IP and UDP headers, so that no datagram is fragmented (the figure the
Datadog clients use)."""

UDS_MAX_DATAGRAM = 8192
"""Largest datagram a client should send over a Unix datagram socket: the Datadog
agent reads each datagram into an 8 KiB buffer and silently truncates longer ones."""


class ProtocolError(ValueError):
    """Something cannot be written in (or was not read from) the DogStatsD format.

    Raised by the encoders when an argument would produce a line that the agent
    would misread or reject, so that the mistake surfaces where it is made instead
    of as a silently missing metric; the message names the argument, the offending
    value and what to do instead. :func:`parse_line` raises it for a bad line, with
    :attr:`reason` set to the same key :attr:`ParseResult.errors` counts.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason
        """A short machine-readable key (``"bad_value"``, ``"oversized"``...)."""

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[str, str]]:
        # Keep the reason through pickling (errors may cross process boundaries).
        return type(self), (str(self), self.reason)


class OversizedLineError(ProtocolError):
    """A single line is larger than the datagram it would have to fit in.

    A datagram transport cannot split a line across datagrams, and cutting it would
    make the agent read a corrupt or different metric, so :meth:`Packer.add` refuses
    the line instead: the caller should count it as a dropped metric (and perhaps
    send fewer tags).
    """

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(
            f"line of {size} bytes (plus its newline) does not fit a datagram of at "
            f"most {max_size} bytes: count it as dropped, or send fewer/shorter tags",
            "oversized",
        )
        self.size = size
        self.max_size = max_size

    def __reduce__(self) -> tuple[type[OversizedLineError], tuple[int, int]]:  # type: ignore[override]
        return type(self), (self.size, self.max_size)


class Status(IntEnum):
    """A service check's status, as numbered on the wire (``_sc|name|<status>``)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class Metric(NamedTuple):
    """One metric line: a name, a type and the values recorded under them.

    ``values`` holds the samples of every numeric type (several when values are
    packed, ``name:1:2:3|d``, DogStatsD protocol 1.1); a set (``type == "s"``) carries
    one string member in ``set_value`` instead and leaves ``values`` empty, so that
    each field has one static type. ``sample_rate`` is the client-side sampling rate
    in (0, 1] (1.0 when absent). ``tags`` are the ``key:value`` or bare tags, in wire
    order. ``timestamp`` (unix seconds, protocol 1.3) asks the agent not to
    aggregate; ``container_id`` is the ``c:`` origin-detection field, as sent.

    ``delta`` is only true for gauges, when parsed with ``statsd_dialect=True``
    (``gauge:+5|g``, ``gauge:-3|g``) or built to be sent to a plain StatsD server:
    the values are then changes to apply to the current gauge, not new values.
    DogStatsD has no deltas; there a sign is a sign.
    """

    name: str
    type: MetricType
    values: tuple[float, ...] = ()
    sample_rate: float = 1.0
    tags: tuple[str, ...] = ()
    timestamp: int | None = None
    container_id: str | None = None
    set_value: str | None = None
    delta: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """A DogStatsD event (``_e{..}:title|text|...``): an entry in Datadog's event stream.

    Optional fields are ``None`` when absent from the wire, not their Datadog
    defaults (priority ``normal``, alert type ``info``, the agent's host and clock),
    so that what was sent is what is read back. ``timestamp`` is unix seconds.
    """

    title: str
    text: str
    timestamp: int | None = None
    hostname: str | None = None
    aggregation_key: str | None = None
    priority: Priority | None = None
    source_type_name: str | None = None
    alert_type: AlertType | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """A DogStatsD service check (``_sc|name|status|...``): the up/down state of a service.

    ``status`` is 0-3 (see :class:`Status`); optional fields are ``None`` when absent.
    """

    name: str
    status: int
    timestamp: int | None = None
    hostname: str | None = None
    tags: tuple[str, ...] = ()
    message: str | None = None


@dataclass(slots=True)
class ParseResult:
    """Everything :func:`parse_packet` read from one packet, and what it could not read.

    ``errors`` counts the lines that were skipped, by reason (see
    :func:`parse_packet`), so an agent can report bad lines per cause instead of
    logging every one of them. The lists belong to the caller.
    """

    metrics: list[Metric] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def bad_lines(self) -> int:
        """How many lines were skipped, whatever the reason."""
        return sum(self.errors.values())
