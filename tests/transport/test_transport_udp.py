"""UDPTransport against real sockets: IPv4, IPv6, lazy resolution, failures."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest
from transport_support import (
    MAX_DELAY,
    PATIENCE,
    FakeClock,
    udp_server,
)

from ci_support import require_ipv6_loopback
from conveyor.transport import DEFAULT_UDP_PACKET_SIZE, TransportError, UDPTransport

pytestmark = pytest.mark.timeout(30)

PACKETS = [
    b"page.views:1|c",
    b"queue.depth:12|g|#env:prod\nlatency:3.5|ms|@0.5",
    bytes(range(256)) * 5,  # any bytes: the transport does not look inside
    b"x" * DEFAULT_UDP_PACKET_SIZE,  # the largest packet that is accepted
]


def test_ipv4_packets_arrive_intact_and_are_counted() -> None:
    with udp_server() as server, UDPTransport("127.0.0.1", server.getsockname()[1]) as t:
        for packet in PACKETS:
            t.send(packet)
        assert [server.recv(65536) for _ in PACKETS] == PACKETS
        stats = t.statistics()
        assert stats.packets_sent == len(PACKETS)
        assert stats.bytes_sent == sum(map(len, PACKETS))
        assert dict(stats.errors) == {}
        assert stats.reconnects == 0


def test_ipv6_packets_arrive_intact() -> None:
    require_ipv6_loopback()
    with udp_server("::1") as server:
        port = server.getsockname()[1]
        for host in ("::1", "[::1]"):
            with UDPTransport(host, port) as t:
                assert t.url == f"udp://[::1]:{port}"
                for packet in PACKETS:
                    t.send(packet)
                assert [server.recv(65536) for _ in PACKETS] == PACKETS


def test_the_send_buffer_is_at_least_32_kib() -> None:
    with udp_server() as server, UDPTransport("127.0.0.1", server.getsockname()[1]) as t:
        t.send(b"a:1|c")
        assert t._sock is not None
        assert t._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 32 * 1024


def test_a_name_is_resolved_on_first_send_not_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, ...]] = []
    real = socket.getaddrinfo

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    with udp_server() as server:
        t = UDPTransport("127.0.0.1", server.getsockname()[1])
        assert calls == []
        t.send(b"a:1|c")
        t.send(b"b:1|c")
        assert len(calls) == 1  # a connected socket: once, not per packet
        assert server.recv(100) == b"a:1|c"
        t.close()


def test_a_resolution_failure_is_reported_backed_off_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = socket.getaddrinfo
    broken = True

    def flaky(host: Any, *args: Any, **kwargs: Any) -> Any:
        if broken:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky)
    clock = FakeClock()
    with udp_server() as server:
        t = UDPTransport("statsd.example", server.getsockname()[1], clock=clock)
        with pytest.raises(TransportError) as caught:
            t.send(b"a:1|c")
        assert caught.value.reason == "resolve"
        assert "statsd.example" in str(caught.value)
        assert isinstance(caught.value.__cause__, socket.gaierror)
        with pytest.raises(TransportError) as caught:
            t.send(b"a:1|c")
        assert caught.value.reason == "backing_off"

        broken = False
        clock.advance(MAX_DELAY)
        t.send(b"b:1|c")
        assert server.recv(100) == b"b:1|c"
        assert dict(t.statistics().errors) == {"resolve": 1, "backing_off": 1}
        t.close()


def _send_until_refused(t: UDPTransport) -> TransportError:
    """Packets to a closed port succeed until the ICMP "port unreachable" comes back."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            t.send(b"lost:1|c")
        except TransportError as error:
            return error
    pytest.fail("no ECONNREFUSED from a closed UDP port on loopback")


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_refused_address_is_tried_last_after_re_resolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "localhost" may resolve to ::1 and 127.0.0.1 while the agent listens on only one.
    dead = ("127.0.0.1", _closed_udp_port())
    with udp_server() as server:
        live = server.getsockname()
        calls = 0

        def two_addresses(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return [
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", dead),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", live),
            ]

        monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
        clock = FakeClock()
        t = UDPTransport("agent.example", 8125, clock=clock)
        error = _send_until_refused(t)
        assert error.reason == "send"
        assert error.errno == errno.ECONNREFUSED
        assert calls == 1
        with pytest.raises(TransportError) as caught:
            t.send(b"lost:1|c")
        assert caught.value.reason == "backing_off"

        clock.advance(MAX_DELAY)
        t.send(b"found:1|c")
        assert calls == 2  # resolved again after the error
        assert server.recv(100) == b"found:1|c"
        assert t.statistics().reconnects == 1
        t.close()


def test_too_large_is_refused_without_sending() -> None:
    with (
        udp_server() as server,
        UDPTransport("127.0.0.1", server.getsockname()[1], max_packet_size=10) as t,
    ):
        with pytest.raises(TransportError) as caught:
            t.send(b"x" * 11)
        assert caught.value.reason == "too_large"
        t.send(b"y" * 10)
        assert server.recv(100) == b"y" * 10  # the first thing that arrived
        assert dict(t.statistics().errors) == {"too_large": 1}


@pytest.mark.parametrize(
    ("host", "port", "options", "error"),
    [
        ("", 8125, {}, ValueError),
        (" localhost", 8125, {}, ValueError),
        ("localhost", 0, {}, ValueError),
        ("localhost", 65536, {}, ValueError),
        ("localhost", True, {}, TypeError),
        ("localhost", 8125, {"max_packet_size": 0}, ValueError),
        ("localhost", 8125, {"max_packet_size": 65508}, ValueError),
        ("localhost", 8125, {"max_packet_size": 1.5}, TypeError),
        ("localhost", 8125, {"clock": 3.0}, TypeError),
    ],
)
def test_bad_arguments_fail_at_construction(
    host: str, port: int, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        UDPTransport(host, port, **options)
