"""The DogStatsD wire format: encode metrics, events and service checks, pack them
into datagrams, and parse datagrams back.

Shared by the client (which encodes and packs) and the agent (which parses); it
depends on nothing else in conveyor. A round trip::

    from conveyor.protocol import Packer, encode_metric, parse_packet

    packer = Packer()                                    # 1432-byte UDP datagrams
    line = encode_metric("page.views", "c", 1, tags={"env": "prod"})
    assert line == b"page.views:1|c|#env:prod"
    datagram = packer.add(line) or packer.flush()        # b"page.views:1|c|#env:prod\\n"
    result = parse_packet(datagram)
    assert result.metrics[0].values == (1.0,) and not result.errors

Encoders validate their arguments and raise :class:`ProtocolError` (a
``ValueError``) with a message saying what to fix; the parser never raises and
counts bad lines by reason instead (:data:`BAD_LINE_REASONS`).
"""

from ._encode import (
    Tags,
    Value,
    encode,
    encode_event,
    encode_metric,
    encode_service_check,
    encode_tags,
)
from ._model import (
    UDP_MAX_DATAGRAM,
    UDS_MAX_DATAGRAM,
    AlertType,
    Event,
    Metric,
    MetricType,
    OversizedLineError,
    ParseResult,
    Priority,
    ProtocolError,
    ServiceCheck,
    Status,
)
from ._pack import Packer
from ._parse import BAD_LINE_REASONS, parse_line, parse_packet

__all__ = [
    "BAD_LINE_REASONS",
    "UDP_MAX_DATAGRAM",
    "UDS_MAX_DATAGRAM",
    "AlertType",
    "Event",
    "Metric",
    "MetricType",
    "OversizedLineError",
    "Packer",
    "ParseResult",
    "Priority",
    "ProtocolError",
    "ServiceCheck",
    "Status",
    "Tags",
    "Value",
    "encode",
    "encode_event",
    "encode_metric",
    "encode_service_check",
    "encode_tags",
    "parse_line",
    "parse_packet",
]
