"""conveyor's socket layer: writes DogStatsD packets to an agent, and never raises
anything but :class:`TransportError` into the thread that sends.

It knows sockets, not metrics: a packet is ``bytes`` the caller has already packed to
at most ``max_packet_size``. ``send()`` hands the whole packet to the operating system
or raises :class:`TransportError` with a one-word ``reason`` the caller counts::

    from conveyor.transport import TransportError, transport_from_url

    transport = transport_from_url("udp://localhost:8125")   # nothing resolved yet
    try:
        transport.send(b"page.views:1|c\\nqueue.depth:12|g")
    except TransportError as error:
        dropped[error.reason] += 1                           # never an OSError
    transport.statistics()    # packets_sent, bytes_sent, errors by reason, reconnects
    transport.close()

=====================  =============================================  ===============
class                  wire                                           max_packet_size
=====================  =============================================  ===============
UDPTransport           one datagram per packet, IPv4 or IPv6          1432
UnixDatagramTransport  one datagram per packet                        8192
UnixStreamTransport    4-byte little-endian length, then the packet   8192
TCPTransport           the packet's lines, ending in one newline      8192
=====================  =============================================  ===============

One thread (the sender) calls ``send()``; ``close()`` and ``statistics()`` may be
called from any thread. Failures back off exponentially (0.05 s doubling to 5 s, with
jitter, reset by a delivered packet): meanwhile ``send()`` fails at once with reason
``"backing_off"``, without a syscall. Names are resolved on the first ``send()``, never
at construction, and again after a failure.

:class:`HTTPTransport` is the odd one out: it sends batches of JSON items over HTTP
for :class:`conveyor.Dispatcher` (urllib3, imported on first use: ``conveyor[http]``).
"""

from ._base import Transport
from ._datagram import (
    DEFAULT_UDP_PACKET_SIZE,
    DEFAULT_UNIX_PACKET_SIZE,
    UDPTransport,
    UnixDatagramTransport,
)
from ._errors import REASONS, Reason, TransportError
from ._http import HTTPResponse, HTTPTransport
from ._stats import TransportStatistics
from ._stream import TCPTransport, UnixStreamTransport
from ._url import DEFAULT_PORT, Address, parse_url, transport_from_url

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_UDP_PACKET_SIZE",
    "DEFAULT_UNIX_PACKET_SIZE",
    "REASONS",
    "Address",
    "HTTPResponse",
    "HTTPTransport",
    "Reason",
    "TCPTransport",
    "Transport",
    "TransportError",
    "TransportStatistics",
    "UDPTransport",
    "UnixDatagramTransport",
    "UnixStreamTransport",
    "parse_url",
    "transport_from_url",
]
