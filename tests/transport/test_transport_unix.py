"""Unix datagram and Unix stream transports against real servers."""

from __future__ import annotations

import errno
import os
import time

import pytest
from transport_support import (
    FIRST_DELAY,
    MAX_DELAY,
    PATIENCE,
    FakeClock,
    accept,
    read_frame,
    read_to_end,
    socket_dir,
    split_frames,
    unix_datagram_server,
    unix_stream_server,
)

from conveyor.transport import (
    DEFAULT_UNIX_PACKET_SIZE,
    TransportError,
    UnixDatagramTransport,
    UnixStreamTransport,
)

pytestmark = pytest.mark.timeout(30)

PACKETS = [b"a:1|c", b"b:2|g\nc:3|ms", b"\x00\xff" * 100, b"z" * DEFAULT_UNIX_PACKET_SIZE]


def _reason(send: object, packet: bytes = b"p:1|c") -> str:
    """The reason a send fails with (the test fails if it succeeds)."""
    assert callable(send)
    with pytest.raises(TransportError) as caught:
        send(packet)
    return caught.value.reason


# -- Unix datagram --------------------------------------------------------------------


def test_unix_datagram_packets_arrive_intact() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        with unix_datagram_server(path) as server, UnixDatagramTransport(path) as t:
            assert t.url == f"unixgram://{path}"
            assert t.max_packet_size == DEFAULT_UNIX_PACKET_SIZE
            for packet in PACKETS:
                t.send(packet)
            assert [server.recv(65536) for _ in PACKETS] == PACKETS
            assert t.statistics().packets_sent == len(PACKETS)


def test_unix_datagram_without_a_receiver_fails_to_connect_then_recovers() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        t = UnixDatagramTransport(path, clock=clock)
        with pytest.raises(TransportError) as caught:
            t.send(b"lost:1|c")
        assert caught.value.reason == "connect"
        assert caught.value.errno == errno.ENOENT
        assert _reason(t.send) == "backing_off"
        with unix_datagram_server(path) as server:
            clock.advance(MAX_DELAY)
            t.send(b"found:1|c")
            assert server.recv(100) == b"found:1|c"
        t.close()


def test_unix_datagram_reconnects_to_a_restarted_receiver() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        t = UnixDatagramTransport(path, clock=clock)
        with unix_datagram_server(path) as server:
            t.send(b"one")
            assert server.recv(100) == b"one"
        os.unlink(path)
        with unix_datagram_server(path) as server:
            # The old socket's peer is gone: a hard failure, then a new connection.
            assert _reason(t.send) == "send"
            assert _reason(t.send) == "backing_off"
            clock.advance(MAX_DELAY)
            t.send(b"two")
            assert server.recv(100) == b"two"
        stats = t.statistics()
        assert stats.reconnects == 1
        assert dict(stats.errors) == {"send": 1, "backing_off": 1}
        t.close()


def test_a_full_unix_datagram_receiver_drops_packets_but_keeps_the_socket() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        with unix_datagram_server(path) as server, UnixDatagramTransport(path, clock=clock) as t:
            deadline = time.monotonic() + PATIENCE
            sent = 0
            while time.monotonic() < deadline:
                try:
                    t.send(b"q" * 4096)
                    sent += 1
                except TransportError as error:
                    assert error.reason == "send"
                    assert error.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
                    break
            else:
                pytest.fail("the receiver's queue never filled up")
            # A soft failure: no back-off, no new socket; the next send tries again.
            assert _reason(t.send, b"q" * 4096) == "send"
            assert server.recv(65536) == b"q" * 4096
            t.send(b"after")
            stats = t.statistics()
            assert stats.packets_sent == sent + 1
            assert stats.reconnects == 0
            assert dict(stats.errors) == {"send": 2}


# -- Unix stream ----------------------------------------------------------------------


def test_unix_stream_frames_are_length_prefixed_little_endian() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        with unix_stream_server(path) as server, UnixStreamTransport(path) as t:
            assert t.url == f"unixstream://{path}"
            for packet in PACKETS:
                t.send(packet)
            with accept(server) as conn:
                assert conn.recv(4) == len(PACKETS[0]).to_bytes(4, "little")
                assert conn.recv(len(PACKETS[0])) == PACKETS[0]
                assert [read_frame(conn) for _ in PACKETS[1:]] == PACKETS[1:]
            stats = t.statistics()
            assert stats.packets_sent == len(PACKETS)
            assert stats.bytes_sent == sum(map(len, PACKETS))  # payload, not framing


def test_unix_stream_reconnects_when_its_server_restarts() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        t = UnixStreamTransport(path, clock=clock)
        with unix_stream_server(path) as server:
            t.send(b"one")
            with accept(server) as conn:
                assert read_frame(conn) == b"one"
        os.unlink(path)  # the agent is down: no listener, no connection

        # The hang-up is seen before writing; reconnecting fails; then we back off.
        assert _reason(t.send) == "connect"
        assert _reason(t.send) == "backing_off"
        assert _reason(t.send) == "backing_off"

        with unix_stream_server(path) as server:
            clock.advance(MAX_DELAY)
            t.send(b"two")
            t.send(b"three")
            with accept(server) as conn:
                assert read_frame(conn) == b"two"
                assert read_frame(conn) == b"three"
        stats = t.statistics()
        assert stats.packets_sent == 3
        assert stats.reconnects == 1
        assert dict(stats.errors) == {"connect": 1, "backing_off": 2}
        t.close()


def test_a_dropped_connection_is_replaced_without_losing_the_packet() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        with unix_stream_server(path) as server, UnixStreamTransport(path) as t:
            t.send(b"one")
            with accept(server) as conn:  # the agent closes an idle connection
                assert read_frame(conn) == b"one"
            t.send(b"two")
            with accept(server) as conn:
                assert read_frame(conn) == b"two"
            assert t.statistics().reconnects == 1
            assert dict(t.statistics().errors) == {}


def test_back_off_doubles_up_to_its_ceiling_and_resets_after_a_success() -> None:
    eps = 1e-6
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        t = UnixStreamTransport(path, clock=clock)
        assert _reason(t.send) == "connect"
        nominal = FIRST_DELAY
        for _ in range(10):
            # The jittered delay lies in [nominal / 2, nominal].
            clock.advance(nominal / 2 - eps)
            assert _reason(t.send) == "backing_off"
            clock.advance(nominal / 2 + eps)
            assert _reason(t.send) == "connect"
            nominal = min(MAX_DELAY, nominal * 2)
        assert nominal == MAX_DELAY

        with unix_stream_server(path) as server:
            clock.advance(MAX_DELAY)
            t.send(b"up")
            with accept(server) as conn:
                assert read_frame(conn) == b"up"
        os.unlink(path)
        # A success reset the back-off: the next failure waits FIRST_DELAY at most.
        assert _reason(t.send) == "connect"
        clock.advance(FIRST_DELAY / 2 - eps)
        assert _reason(t.send) == "backing_off"
        clock.advance(FIRST_DELAY / 2 + eps)
        assert _reason(t.send) == "connect"
        assert t.statistics().errors["connect"] == 13
        t.close()


def test_a_timed_out_write_never_leaves_a_partial_frame_on_a_live_connection() -> None:
    size = 1 << 16
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        clock = FakeClock()
        with unix_stream_server(path) as server:
            t = UnixStreamTransport(path, max_packet_size=size, send_timeout=0.2, clock=clock)
            packets = [bytes([i % 251]) * size for i in range(200)]
            sent = 0
            with pytest.raises(TransportError) as caught:
                for packet in packets:  # nobody reads: the buffers fill up, a write times out
                    t.send(packet)
                    sent += 1
            assert caught.value.reason == "send"
            assert caught.value.errno is None  # a timeout, not an OS error number
            assert 0 < sent < len(packets)

            with accept(server) as old:
                # The connection was closed after the failed write: the stream ends with
                # every whole frame that was sent, then at most a prefix of the failed one.
                frames, rest = split_frames(read_to_end(old))
                assert frames == packets[:sent]
                failed_frame = len(packets[sent]).to_bytes(4, "little") + packets[sent]
                assert len(rest) < len(failed_frame)
                assert failed_frame.startswith(rest)

            assert _reason(t.send) == "backing_off"
            clock.advance(MAX_DELAY)
            t.send(b"fresh")
            with accept(server) as new:
                assert read_frame(new) == b"fresh"  # starts at a frame boundary
            t.close()
