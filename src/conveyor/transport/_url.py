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


#: What a URL names: ``(host, port)`` for ``udp``/``tcp``, a path for Unix sockets.
Address = tuple[str, int] | str


class _URLError:
    """Builds the error of one kind of URL: what it is called and its accepted forms."""

    def __init__(self, what: str, accepted: str) -> None:
        self.what = what
        self.accepted = accepted

    def __call__(self, url: str, problem: str) -> ValueError:
        return ValueError(
            f"invalid {self.what} {url!r}: {problem}; accepted forms: {self.accepted}"
        )


def parse_url(
    url: str,
    *,
    what: str = "DogStatsD URL",
    accepted: str = ACCEPTED_FORMS,
    port_zero: bool = False,
) -> tuple[str, Address]:
    """``(kind, address)`` for a ``DD_DOGSTATSD_URL``-style URL: ``kind`` is ``"udp"``,
    ``"tcp"``, ``"unixgram"`` (also written ``unix://``) or ``"unixstream"``.

    A ``ValueError`` calls the URL ``what`` and lists the ``accepted`` forms otherwise.
    Port 0 is refused unless ``port_zero`` (a server's "let the kernel pick"). The
    agent's listeners parse their URLs here too, so that both ends read an address the
    same way.
    """
    invalid = _URLError(what, accepted)
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    scheme, separator, rest = url.strip().partition("://")
    if not separator:
        raise invalid(url, "no scheme (expected scheme://...)")
    scheme = scheme.lower()
    if scheme in ("unix", "unixgram"):
        return "unixgram", _path(invalid, url, scheme, rest)
    if scheme == "unixstream":
        return "unixstream", _path(invalid, url, scheme, rest)
    if scheme in ("udp", "tcp"):
        return scheme, _host_port(invalid, url, rest, port_zero)
    raise invalid(url, f"unknown scheme {scheme!r}")


def transport_from_url(url: str, *, max_packet_size: int | None = None) -> Transport:
    """The transport for ``url``; a ``ValueError`` naming the accepted forms otherwise.

    Surrounding white space is ignored (environment variables often end in a newline)
    and the scheme is case-insensitive. Each transport's own defaults apply (packet
    size, timeouts) unless ``max_packet_size`` is given; construct the class directly
    to change the timeouts.
    """
    kind, address = parse_url(url)
    unix_size = max_packet_size or DEFAULT_UNIX_PACKET_SIZE
    if isinstance(address, str):
        if kind == "unixgram":
            return UnixDatagramTransport(address, max_packet_size=unix_size)
        return UnixStreamTransport(address, max_packet_size=unix_size)
    host, port = address
    if kind == "udp":
        return UDPTransport(host, port, max_packet_size=max_packet_size or DEFAULT_UDP_PACKET_SIZE)
    return TCPTransport(host, port, max_packet_size=unix_size)


def _path(invalid: _URLError, url: str, scheme: str, rest: str) -> str:
    if not rest:
        raise invalid(url, "no socket path")
    if not rest.startswith("/"):
        raise invalid(
            url,
            f"the socket path must be absolute, which makes three slashes in all "
            f"(e.g. {scheme}:///var/run/datadog/dsd.socket)",
        )
    if rest.endswith("/"):
        raise invalid(url, "the socket path names a directory")
    if "\0" in rest:
        raise invalid(url, "the socket path contains a NUL character")
    return rest


def _host_port(invalid: _URLError, url: str, rest: str, port_zero: bool) -> tuple[str, int]:
    if rest.endswith("/"):
        rest = rest[:-1]  # udp://host:8125/ is a common way to write it
    for character, what in (("/", "path"), ("?", "query"), ("#", "fragment"), ("@", "user")):
        if character in rest:
            raise invalid(url, f"a network URL takes no {what}")
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise invalid(url, "an IPv6 address opened with '[' is not closed with ']'")
        host, after = rest[1:close], rest[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise invalid(url, f"{host!r} is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise invalid(url, f"unexpected {after!r} after the IPv6 address")
        port_text: str | None = after[1:] if after else None
    else:
        if rest.count(":") > 1:
            raise invalid(url, "an IPv6 address must be in brackets, e.g. udp://[::1]:8125")
        host, colon, port = rest.partition(":")
        port_text = port if colon else None
        if not host:
            raise invalid(url, "no host")
        if any(character.isspace() for character in host) or "[" in host or "]" in host:
            raise invalid(url, f"{host!r} is not a host name or address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text:
        raise invalid(url, "a ':' with no port after it")
    lowest = 0 if port_zero else 1
    if not (port_text.isascii() and port_text.isdigit()) or not lowest <= int(port_text) < 65536:
        raise invalid(url, f"the port must be a number from {lowest} to 65535, not {port_text!r}")
    return host, int(port_text)
