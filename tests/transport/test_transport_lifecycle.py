"""What every transport shares: close(), statistics(), errors, threads and fork."""

from __future__ import annotations

import dataclasses
import os
import pickle
import threading
import time

import pytest
from transport_support import (
    PATIENCE,
    accept,
    read_frame,
    socket_dir,
    udp_server,
    unix_stream_server,
)

from conveyor.transport import (
    REASONS,
    TCPTransport,
    Transport,
    TransportError,
    TransportStatistics,
    UDPTransport,
    UnixDatagramTransport,
    UnixStreamTransport,
)

pytestmark = pytest.mark.timeout(30)


def _all_kinds(directory: str) -> list[Transport]:
    path = os.path.join(directory, "nothing-here.sock")
    return [
        UDPTransport("127.0.0.1", 9),
        TCPTransport("127.0.0.1", 9),
        UnixDatagramTransport(path),
        UnixStreamTransport(path),
    ]


def test_close_is_idempotent_and_then_sends_fail_with_closed() -> None:
    with socket_dir() as d:
        for t in _all_kinds(d):
            t.close()
            t.close()
            with pytest.raises(TransportError) as caught:
                t.send(b"a:1|c")
            assert caught.value.reason == "closed"
            t.close()
            assert t.statistics().errors == {"closed": 1}


def test_close_from_many_threads_at_once() -> None:
    with udp_server() as server:
        t = UDPTransport("127.0.0.1", server.getsockname()[1])
        t.send(b"open")
        barrier = threading.Barrier(4)
        failures: list[BaseException] = []

        def close() -> None:
            try:
                barrier.wait(PATIENCE)
                t.close()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PATIENCE)
        assert not any(thread.is_alive() for thread in threads)
        assert failures == []
        assert t._sock is None


def _sender(t: Transport, packet: bytes, started: threading.Event, out: list[object]) -> None:
    """Send until the transport is closed; record the final error (or anything odd)."""
    try:
        while True:
            try:
                t.send(packet)
            except TransportError as error:
                if error.reason == "closed":
                    out.append(error)
                    return
                if error.reason != "send":  # a full datagram buffer may drop a packet
                    out.append(error)
                    return
            started.set()
    except BaseException as exc:
        out.append(exc)


def test_close_during_sends_on_a_datagram_socket() -> None:
    with udp_server() as server:
        t = UDPTransport("127.0.0.1", server.getsockname()[1])
        started = threading.Event()
        out: list[object] = []
        thread = threading.Thread(target=_sender, args=(t, b"a:1|c", started, out))
        thread.start()
        assert started.wait(PATIENCE)
        t.close()
        thread.join(PATIENCE)
        assert not thread.is_alive()
        assert len(out) == 1
        assert isinstance(out[0], TransportError)
        assert out[0].reason == "closed"
        assert t._sock is None


def test_close_wakes_a_send_blocked_on_a_full_stream() -> None:
    # Nobody reads, the send timeout is long: the sender blocks in sendall() once the
    # buffers are full, and only close() can get it out in time.
    size = 1 << 16
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        with unix_stream_server(path) as server:
            t = UnixStreamTransport(path, max_packet_size=size, send_timeout=60.0)
            started = threading.Event()
            out: list[object] = []
            thread = threading.Thread(target=_sender, args=(t, b"s" * size, started, out))
            thread.start()
            assert started.wait(PATIENCE)
            with accept(server):
                began = time.monotonic()
                t.close()
                thread.join(PATIENCE)
                assert not thread.is_alive()
                assert time.monotonic() - began < PATIENCE
        assert len(out) == 1
        assert isinstance(out[0], TransportError)
        assert out[0].reason == "closed"
        assert t._sock is None


def test_statistics_are_a_frozen_snapshot() -> None:
    with udp_server() as server:
        t = UDPTransport("127.0.0.1", server.getsockname()[1], max_packet_size=100)
        before = t.statistics()
        assert before == TransportStatistics()
        t.send(b"a" * 10)
        t.send(b"b" * 20)
        t.send(b"")  # nothing to send: neither sent nor an error
        for _ in range(2):
            with pytest.raises(TransportError):
                t.send(b"c" * 101)
        t.close()
        with pytest.raises(TransportError):
            t.send(b"d")
        after = t.statistics()
        assert after == TransportStatistics(
            packets_sent=2, bytes_sent=30, errors={"too_large": 2, "closed": 1}, reconnects=0
        )
        assert after.errors_total == 3
        assert before.packets_sent == 0  # earlier snapshots do not move
        with pytest.raises(dataclasses.FrozenInstanceError):
            after.packets_sent = 5  # type: ignore[misc]
        with pytest.raises(TypeError):
            after.errors["send"] = 1  # type: ignore[index]


def test_transport_error_carries_a_reason_and_survives_pickling() -> None:
    error = TransportError("send", "udp://x:1: send failed: refused", errno=111)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, str(copy), copy.errno) == ("send", str(error), 111)
    assert "send" in repr(copy)
    assert set(REASONS) == {"resolve", "connect", "send", "too_large", "closed", "backing_off"}
    assert not issubclass(TransportError, OSError)  # one type to catch, never an OSError


def test_repr_and_context_manager() -> None:
    with UDPTransport("::1", 8125) as t:
        assert repr(t) == "UDPTransport('udp://[::1]:8125')"
    assert t.closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone() -> None:
    with socket_dir() as d:
        path = os.path.join(d, "dsd.sock")
        with unix_stream_server(path) as server, UnixStreamTransport(path) as t:
            t.send(b"parent-1")
            with accept(server) as parent_conn:
                assert read_frame(parent_conn) == b"parent-1"
                pid = os.fork()
                if pid == 0:  # the child: report through the exit status only
                    code = 1
                    try:
                        fresh = t.statistics() == TransportStatistics()
                        t.send(b"child")
                        code = 0 if fresh and t.statistics().packets_sent == 1 else 2
                    finally:
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                with accept(server) as child_conn:  # the child's own connection
                    assert read_frame(child_conn) == b"child"
                # The child closed only its copy: the parent's connection is intact.
                t.send(b"parent-2")
                assert read_frame(parent_conn) == b"parent-2"
                assert t.statistics().packets_sent == 2
                assert t.statistics().reconnects == 0
