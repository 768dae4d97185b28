"""`transport_from_url`: a transport from a ``DD_DOGSTATSD_URL``-style address.

The accepted forms are those of the Datadog clients' ``DD_DOGSTATSD_URL`` plus
``tcp://``. Parsing is strict and by hand (not ``urllib.parse``, which accepts and
silently drops much of what a typo produces): whatever is not understood is an error
that lists the accepted forms, because a metrics address that is quietly wrong loses
every metric without a trace. Nothing is resolved or connected here.
"""

from __future__ import annotations

import ipaddress

from ._base import Transport
from ._datagram import (
    DEFAULT_UDP_PACKET_SIZE,
    DEFAULT_UNIX_PACKET_SIZE,
    UDPTransport,
    UnixDatagramTransport,
)
from ._stream import TCPTransport, UnixStreamTransport

#: The port of ``udp://`` and ``tcp://`` URLs that give none.
DEFAULT_PORT = 8125

ACCEPTED_FORMS = (
    "udp://host[:port], udp://[ipv6-address][:port], tcp://host[:port] "
    f"(the port defaults to {DEFAULT_PORT}); unix:///absolute/path or "
    "unixgram:///absolute/path (Unix datagram); unixstream:///absolute/path (Unix stream)"
)


def _invalid(url: str, problem: str) -> ValueError:
    return ValueError(f"invalid DogStatsD URL {url!r}: {problem}; accepted forms: {ACCEPTED_FORMS}")


def transport_from_url(url: str, *, max_packet_size: int | None = None) -> Transport:
    """The transport for ``url``; a ``ValueError`` naming the accepted forms otherwise.

    Surrounding white space is ignored (environment variables often end in a newline)
    and the scheme is case-insensitive. Each transport's own defaults apply (packet
    size, timeouts) unless ``max_packet_size`` is given; construct the class directly
    to change the timeouts.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    text = url.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise _invalid(url, "no scheme (expected scheme://...)")
    scheme = scheme.lower()
    unix_size = max_packet_size or DEFAULT_UNIX_PACKET_SIZE
    if scheme in ("unix", "unixgram"):
        return UnixDatagramTransport(_path(url, scheme, rest), max_packet_size=unix_size)
    if scheme == "unixstream":
        return UnixStreamTransport(_path(url, scheme, rest), max_packet_size=unix_size)
    if scheme == "udp":
        host, port = _host_port(url, rest)
        return UDPTransport(host, port, max_packet_size=max_packet_size or DEFAULT_UDP_PACKET_SIZE)
    if scheme == "tcp":
        host, port = _host_port(url, rest)
        return TCPTransport(host, port, max_packet_size=unix_size)
    raise _invalid(url, f"unknown scheme {scheme!r}")


def _path(url: str, scheme: str, rest: str) -> str:
    if not rest:
        raise _invalid(url, "no socket path")
    if not rest.startswith("/"):
        raise _invalid(
            url,
            f"the socket path must be absolute, which makes three slashes in all "
            f"(e.g. {scheme}:///var/run/datadog/dsd.socket)",
        )
    if rest.endswith("/"):
        raise _invalid(url, "the socket path names a directory")
    if "\0" in rest:
        raise _invalid(url, "the socket path contains a NUL character")
    return rest


def _host_port(url: str, rest: str) -> tuple[str, int]:
    if rest.endswith("/"):
        rest = rest[:-1]  # udp://host:8125/ is a common way to write it
    for character, what in (("/", "path"), ("?", "query"), ("#", "fragment"), ("@", "user")):
        if character in rest:
            raise _invalid(url, f"a network URL takes no {what}")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _invalid(url, "an IPv6 address opened with '[' is not closed with ']'")
        host, after = rest[1:close], rest[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(url, f"{host!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise _invalid(url, f"unexpected {after!r} after the IPv6 address")
        port_text: str | None = after[1:] if after else None
    else:
        if rest.count(":") > 1:
            raise _invalid(url, "an IPv6 address must be in brackets, e.g. udp://[::1]:8125")
        host, colon, port = rest.partition(":")
        port_text = port if colon else None
        if not host:
            raise _invalid(url, "no host")
        if any(character.isspace() for character in host) or "[" in host or "]" in host:
            raise _invalid(url, f"{host!r} is not a host name or address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text:
        raise _invalid(url, "a ':' with no port after it")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise _invalid(url, f"the port must be a number from 1 to 65535, not {port_text!r}")
    return host, int(port_text)
