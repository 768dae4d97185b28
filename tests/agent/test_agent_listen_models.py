"""Stream listeners (TCP, Unix stream) under each connection threading model, on real
sockets: per-connection order, framing edge cases, idle timeout, connection cap,
garbage, and no thread left behind."""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from agent_listen_support import (
    PATIENCE,
    Collector,
    agent_threads,
    connect,
    eventually,
    frame,
    reads_eof,
    socket_dir,
)

from conveyor.agent._listen import Listener, listen
from conveyor.agent._models import DEFAULT_MODEL, MODELS, model_class

KINDS = ("tcp", "unixstream")


@contextmanager
def serving(kind: str, model: str, sink: Collector, **options: object) -> Iterator[Listener]:
    with socket_dir() as directory:
        url = "tcp://127.0.0.1:0" if kind == "tcp" else f"unixstream://{directory}/agent.sock"
        listener = listen(url, sink, model=model, **options)
        listener.start()
        try:
            yield listener
        finally:
            listener.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_many_connections_arrive_intact_and_in_order(kind: str, model: str) -> None:
    connections, per_connection = 16, 300
    sink = Collector()
    before = agent_threads()
    with serving(kind, model, sink) as listener:
        barrier = threading.Barrier(connections)
        errors: list[BaseException] = []

        def send(number: int) -> None:
            try:
                rng = random.Random(number)
                stream = b"".join(
                    frame(kind, f"c{number}.n:{i}|c|#k:v".encode()) for i in range(per_connection)
                )
                with connect(kind, listener.address) as sock:
                    barrier.wait(PATIENCE)
                    position = 0
                    while position < len(stream):  # cut anywhere, frames and lines split
                        step = rng.choice((1, 3, 17, 100, 1500, 9000))
                        sock.sendall(stream[position : position + step])
                        position += step
            except BaseException as error:
                errors.append(error)

        senders = [threading.Thread(target=send, args=(n,)) for n in range(connections)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(PATIENCE * 3)
        assert not errors
        assert sink.wait_lines(connections * per_connection)
        seen: dict[int, list[int]] = {}
        for line in sink.lines():
            match = re.fullmatch(rb"c(\d+)\.n:(\d+)\|c\|#k:v", line)
            assert match, line
            seen.setdefault(int(match[1]), []).append(int(match[2]))
        assert seen == {n: list(range(per_connection)) for n in range(connections)}
        stats = listener.statistics()
        assert stats.connections_total == connections
        assert stats.framing_errors_total == 0
        assert eventually(lambda: listener.statistics().connections_open == 0)
    assert agent_threads() <= before  # close() left no thread behind


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_unix_frames_split_bytewise_and_many_per_read(model: str) -> None:
    sink = Collector()
    with (
        serving("unixstream", model, sink) as listener,
        connect("unixstream", listener.address) as sock,
    ):
        for byte in frame("unixstream", b"split:1|c"):
            sock.sendall(bytes([byte]))
        assert sink.wait_packets(1)
        sock.sendall(b"".join(frame("unixstream", f"m{i}:1|c".encode()) for i in range(50)))
        sock.sendall(struct.pack("<I", 0))  # an empty frame is ignored
        sock.sendall(frame("unixstream", b"last:1|c"))
        assert sink.wait_packets(52)
        assert sink.packets == [b"split:1|c"] + [f"m{i}:1|c".encode() for i in range(50)] + [
            b"last:1|c"
        ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_tcp_partial_line_waits_for_the_rest(model: str) -> None:
    sink = Collector()
    with serving("tcp", model, sink) as listener, connect("tcp", listener.address) as sock:
        sock.sendall(b"a:1|c\nb:2")
        assert sink.wait_packets(1)
        sock.sendall(b"|c\n\nc:3|c\r\n")
        assert sink.wait_lines(3)
        assert sink.lines() == [b"a:1|c", b"b:2|c", b"", b"c:3|c\r"]  # the parser drops these


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_what_a_closed_stream_leaves_in_the_framer_is_delivered_or_counted(
    kind: str, model: str
) -> None:
    """A TCP client's last line needs no newline (``printf 'a:1|c' | nc``); a Unix
    stream cut inside a frame, or a line cut by the idle timeout, is counted."""
    sink = Collector()
    with serving(kind, model, sink) as listener:
        with connect(kind, listener.address) as sock:
            cut = frame(kind, b"cut:1|c")[:-3] if kind == "unixstream" else b"last:1|c"
            sock.sendall(frame(kind, b"first:1|c") + cut)
        if kind == "tcp":
            assert sink.wait_packets(2)
            assert sink.packets == [b"first:1|c", b"last:1|c"]
        else:
            assert eventually(lambda: listener.statistics().framing_errors_total == 1)
            assert dict(listener.statistics().framing_errors) == {"truncated_frame": 1}
            assert sink.packets == [b"first:1|c"]
    if kind == "tcp":  # a line the listener itself cuts off (idle) is not a whole line
        sink = Collector()
        with serving(kind, model, sink, idle_timeout=0.2) as listener:
            with connect(kind, listener.address) as sock:
                sock.sendall(b"whole:1|c\nhalf:1")
                assert reads_eof(sock)
            assert eventually(lambda: listener.statistics().framing_errors_total == 1)
            assert dict(listener.statistics().framing_errors) == {"truncated_line": 1}
            assert sink.packets == [b"whole:1|c"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_oversized_frame_closes_that_connection_only(kind: str, model: str) -> None:
    sink = Collector()
    with (
        serving(kind, model, sink, max_frame=100) as listener,
        connect(kind, listener.address) as good,
        connect(kind, listener.address) as bad,
    ):
        good.sendall(frame(kind, b"good:1|c"))
        assert sink.wait_packets(1)
        oversized = struct.pack("<I", 101) if kind == "unixstream" else b"x" * 101
        bad.sendall(frame(kind, b"before:1|c") + oversized)
        assert reads_eof(bad)
        assert eventually(lambda: listener.statistics().framing_errors_total == 1)
        reason = "frame_too_large" if kind == "unixstream" else "line_too_long"
        assert dict(listener.statistics().framing_errors) == {reason: 1}
        good.sendall(frame(kind, b"still:1|c"))
        assert sink.wait_packets(3)
        assert sorted(sink.packets) == [b"before:1|c", b"good:1|c", b"still:1|c"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_idle_connections_are_closed(kind: str, model: str) -> None:
    sink = Collector()
    with serving(kind, model, sink, idle_timeout=0.2) as listener:
        with connect(kind, listener.address) as sock:
            sock.sendall(frame(kind, b"hello:1|c"))
            assert sink.wait_packets(1)
            assert reads_eof(sock)
        assert eventually(lambda: listener.statistics().idle_closed == 1)
        stats = listener.statistics()
        assert stats.connections_open == 0
        assert stats.packets == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_connection_cap_refuses_and_counts(kind: str, model: str) -> None:
    sink = Collector()
    with serving(kind, model, sink, max_connections=2) as listener:
        first = connect(kind, listener.address)
        second = connect(kind, listener.address)
        first.sendall(frame(kind, b"one:1|c"))
        second.sendall(frame(kind, b"two:1|c"))
        assert sink.wait_packets(2)
        with connect(kind, listener.address) as third:
            assert reads_eof(third)
        assert eventually(lambda: listener.statistics().connections_refused == 1)
        assert listener.statistics().connections_open == 2
        first.close()
        assert eventually(lambda: listener.statistics().connections_open == 1)
        with connect(kind, listener.address) as fourth:
            fourth.sendall(frame(kind, b"four:1|c"))
            assert sink.wait_packets(3)
        second.close()
        stats = listener.statistics()
        assert stats.connections_total == 3
        assert stats.connections_refused == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_garbage_never_kills_the_listener(kind: str, model: str) -> None:
    sink = Collector()
    rng = random.Random(6)
    with serving(kind, model, sink, max_frame=4096) as listener:
        for _ in range(20):
            # the listener may close a connection it cannot frame, mid-send
            with (
                connect(kind, listener.address) as sock,
                contextlib.suppress(BrokenPipeError, ConnectionResetError),
            ):
                sock.sendall(rng.randbytes(rng.randrange(1, 20000)))
        assert eventually(lambda: listener.statistics().connections_open == 0)
        with connect(kind, listener.address) as sock:
            sock.sendall(frame(kind, b"after:1|c"))
            assert eventually(lambda: b"after:1|c" in sink.packets)
        assert listener.running


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_close_with_open_connections_leaves_no_thread(kind: str, model: str) -> None:
    before = set(threading.enumerate())
    sink = Collector()
    with serving(kind, model, sink) as listener:
        socks = [connect(kind, listener.address) for _ in range(5)]
        for sock in socks:
            sock.sendall(frame(kind, b"x:1|c"))
        assert sink.wait_packets(5)
        assert len(agent_threads()) >= 1
        listener.close()
        listener.close()  # idempotent
        for sock in socks:
            assert reads_eof(sock)
            sock.close()
    assert set(threading.enumerate()) <= before
    if kind == "unixstream":
        assert not os.path.exists(str(listener.address))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("model", MODELS)
def test_a_raising_sink_is_counted_and_survived(model: str) -> None:
    seen = threading.Event()

    def sink(packet: bytes) -> None:
        if packet == b"boom":
            raise RuntimeError("boom")
        seen.set()

    with socket_dir() as directory:
        listener = listen(f"unixstream://{directory}/s", sink, model=model)
        with listener, connect("unixstream", listener.address) as sock:
            sock.sendall(frame("unixstream", b"boom") + frame("unixstream", b"ok"))
            assert seen.wait(PATIENCE)
            assert eventually(lambda: listener.statistics().sink_errors == 1)
            assert listener.statistics().packets == 2


@pytest.mark.timeout(10)
def test_models_by_name() -> None:
    assert DEFAULT_MODEL in MODELS
    assert [model_class(name).name for name in MODELS] == list(MODELS)
    with pytest.raises(ValueError, match="shared-loop, connection-loops, thread-per-event"):
        model_class("threads")
    with pytest.raises(ValueError, match="idle_timeout"):
        listen("tcp://127.0.0.1:0", Collector(), idle_timeout=0)
    with pytest.raises(ValueError, match="max_connections"):
        listen("tcp://127.0.0.1:0", Collector(), max_connections=0)


@pytest.mark.timeout(10)
def test_stream_statistics_before_start_and_after_close() -> None:
    listener = listen("tcp://127.0.0.1:0", Collector())
    assert listener.statistics().running is False
    assert listener.address == ("127.0.0.1", 0)
    listener.close()  # never started: nothing to do
    with pytest.raises(RuntimeError):
        listener.start()
    with socket.socket() as probe:  # the port was never bound
        probe.bind(("127.0.0.1", 0))
