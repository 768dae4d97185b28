"""transport_from_url: the accepted forms, and a clear error for everything else."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from conveyor.transport import (
    DEFAULT_PORT,
    TCPTransport,
    Transport,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
    transport_from_url,
)

VALID: list[tuple[str, type[Transport], str]] = [
    ("udp://localhost:8125", UDPTransport, "udp://localhost:8125"),
    ("udp://localhost", UDPTransport, f"udp://localhost:{DEFAULT_PORT}"),
    ("udp://127.0.0.1:9125", UDPTransport, "udp://127.0.0.1:9125"),
    ("udp://[::1]:8125", UDPTransport, "udp://[::1]:8125"),
    ("udp://[::1]", UDPTransport, "udp://[::1]:8125"),
    ("udp://[fe80::1%eth0]:8125", UDPTransport, "udp://[fe80::1%eth0]:8125"),
    ("udp://statsd.example:8125/", UDPTransport, "udp://statsd.example:8125"),
    ("UDP://Agent:1", UDPTransport, "udp://Agent:1"),
    ("  udp://agent:65535\n", UDPTransport, "udp://agent:65535"),
    ("tcp://agent:8126", TCPTransport, "tcp://agent:8126"),
    ("tcp://agent", TCPTransport, "tcp://agent:8125"),
    ("tcp://[2001:db8::5]:99", TCPTransport, "tcp://[2001:db8::5]:99"),
    (
        "unix:///var/run/datadog/dsd.socket",
        UnixDatagramTransport,
        "unixgram:///var/run/datadog/dsd.socket",
    ),
    ("unixgram:///run/dsd.sock", UnixDatagramTransport, "unixgram:///run/dsd.sock"),
    ("unixstream:///run/dsd.sock", UnixStreamTransport, "unixstream:///run/dsd.sock"),
]

INVALID: list[tuple[str, str]] = [
    ("", "no scheme"),
    ("localhost:8125", "no scheme"),
    ("/var/run/dsd.sock", "no scheme"),
    ("http://agent:8125", "unknown scheme 'http'"),
    ("udp:/agent:8125", "no scheme"),
    ("udp://", "no host"),
    ("udp://:8125", "no host"),
    ("udp://agent:", "no port after it"),
    ("udp://agent:0", "from 1 to 65535"),
    ("udp://agent:65536", "from 1 to 65535"),
    ("udp://agent:http", "from 1 to 65535"),
    ("udp://agent:-1", "from 1 to 65535"),
    ("udp://agent:8125/metrics", "no path"),
    ("udp://agent:8125?x=1", "no query"),
    ("udp://user@agent:8125", "no user"),
    ("udp://::1:8125", "must be in brackets"),
    ("udp://[::1:8125", "is not closed"),
    ("udp://[agent]:8125", "is not an IPv6 address"),
    ("udp://[::1]8125", "unexpected '8125'"),
    ("udp://ag ent:8125", "is not a host name"),
    ("tcp://agent:99999", "from 1 to 65535"),
    ("unix://", "no socket path"),
    ("unix://var/run/dsd.sock", "must be absolute"),
    ("unixstream://dsd.sock", "must be absolute"),
    ("unixgram:///run/", "names a directory"),
    ("unixdgram:///run/dsd.sock", "unknown scheme"),
]


@pytest.mark.parametrize(("url", "cls", "canonical"), VALID)
def test_valid_urls(url: str, cls: type[Transport], canonical: str) -> None:
    t = transport_from_url(url)
    assert type(t) is cls
    assert t.url == canonical
    assert transport_from_url(t.url).url == canonical  # url round-trips
    t.close()


@pytest.mark.parametrize(("url", "problem"), INVALID)
def test_invalid_urls_say_what_is_wrong_and_what_is_accepted(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        transport_from_url(url)
    message = str(caught.value)
    assert problem in message
    assert repr(url) in message
    assert "accepted forms: udp://host[:port]" in message
    assert "unixstream:///absolute/path" in message


def test_a_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        transport_from_url(b"udp://agent:8125")  # type: ignore[arg-type]


def test_parsing_neither_resolves_nor_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("resolved at construction")

    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    for url, _, _ in VALID:
        transport_from_url(url).close()
