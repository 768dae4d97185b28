"""TCPTransport against a real listener: newline framing, hang-ups, refusals."""

from __future__ import annotations

import errno
import select
import socket

import pytest
from transport_support import (
    MAX_DELAY,
    PATIENCE,
    FakeClock,
    accept,
    recv_exact,
    tcp_server,
)

from ci_support import require_ipv6_loopback
from conveyor.transport import TCPTransport, TransportError

pytestmark = pytest.mark.timeout(30)


def test_each_packet_ends_with_exactly_one_newline_on_the_wire() -> None:
    packets = [b"a:1|c", b"b:2|c\n", b"c:3|c\n\n\n", b"d:1|c\ne:2|c", b"\n\n", b"f:1|g"]
    expected = b"a:1|c\nb:2|c\nc:3|c\nd:1|c\ne:2|c\nf:1|g\n"
    with tcp_server() as server, TCPTransport("127.0.0.1", server.getsockname()[1]) as t:
        assert t.max_packet_size == 8192
        for packet in packets:
            t.send(packet)
        with accept(server) as conn:
            assert recv_exact(conn, len(expected)) == expected
        stats = t.statistics()
        assert stats.packets_sent == 5  # a packet of nothing but newlines is nothing to send
        assert stats.bytes_sent == sum(len(p) for p in packets if p.strip(b"\n"))


def test_ipv6_tcp() -> None:
    require_ipv6_loopback()
    with tcp_server("::1") as server, TCPTransport("::1", server.getsockname()[1]) as t:
        assert t.url == f"tcp://[::1]:{server.getsockname()[1]}"
        t.send(b"a:1|c")
        with accept(server) as conn:
            assert recv_exact(conn, 6) == b"a:1|c\n"


def test_a_connection_closed_by_the_server_is_replaced_before_writing() -> None:
    with tcp_server() as server, TCPTransport("127.0.0.1", server.getsockname()[1]) as t:
        t.send(b"one")
        with accept(server) as conn:
            assert recv_exact(conn, 4) == b"one\n"
        # Wait (on the socket, not a timer) until the server's FIN has reached us.
        assert t._sock is not None
        readable, _, _ = select.select([t._sock], [], [], PATIENCE)
        assert readable
        # Without the hang-up check this write would vanish into a half-closed socket.
        t.send(b"two")
        with accept(server) as conn:
            assert recv_exact(conn, 4) == b"two\n"
        assert t.statistics().reconnects == 1
        assert dict(t.statistics().errors) == {}


def test_a_refused_connection_is_reported_and_backed_off() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        clock = FakeClock()
        t = TCPTransport("127.0.0.1", port, clock=clock)
        with pytest.raises(TransportError) as caught:
            t.send(b"a:1|c")
        assert caught.value.reason == "connect"
        assert caught.value.errno == errno.ECONNREFUSED
        with pytest.raises(TransportError) as caught:
            t.send(b"a:1|c")
        assert caught.value.reason == "backing_off"
        clock.advance(MAX_DELAY)
        with pytest.raises(TransportError) as caught:
            t.send(b"a:1|c")
        assert caught.value.reason == "connect"
        assert dict(t.statistics().errors) == {"connect": 2, "backing_off": 1}
        t.close()


@pytest.mark.parametrize(
    ("connect_timeout", "send_timeout"),
    [(0.0, 1.0), (1.0, -1.0), (1.0, float("inf")), (float("nan"), 1.0)],
)
def test_timeouts_must_be_positive_and_finite(connect_timeout: float, send_timeout: float) -> None:
    with pytest.raises(ValueError, match="must be a positive, finite number"):
        TCPTransport("127.0.0.1", 8125, connect_timeout=connect_timeout, send_timeout=send_timeout)
