"""Datagram listeners (UDP v4/v6, Unix datagram), URLs, Unix socket files and
permissions, kernel drops, and the PacketRing hand-off, on real sockets."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading

import pytest
from agent_listen_support import (
    PATIENCE,
    Collector,
    eventually,
    frame,
    socket_dir,
)

from ci_support import require_ipv6_loopback
from conveyor.agent._listen import (
    DEFAULT_URL,
    TCPListener,
    UDPListener,
    UnixDatagramListener,
    UnixStreamListener,
    listen,
    parse_url,
)
from conveyor.agent._listen_ring import PacketRing


@pytest.mark.timeout(10)
def test_parse_url_forms() -> None:
    assert DEFAULT_URL == "udp://127.0.0.1:8125"
    assert parse_url("udp://127.0.0.1:8125") == ("udp", ("127.0.0.1", 8125))
    assert parse_url(" UDP://[::1]:0/ ") == ("udp", ("::1", 0))
    assert parse_url("tcp://localhost") == ("tcp", ("localhost", 8125))
    assert parse_url("unix:///run/a.sock") == ("unixgram", "/run/a.sock")
    assert parse_url("unixgram:///run/a.sock") == ("unixgram", "/run/a.sock")
    assert parse_url("unixstream:///run/a.sock") == ("unixstream", "/run/a.sock")
    for bad in (
        "127.0.0.1:8125",
        "http://x:1",
        "udp://::1:8125",
        "udp://[::1",
        "udp://[nope]:1",
        "udp://:8125",
        "udp://h:99999",
        "udp://h:x",
        "unix://relative",
        "udp://h:1/path",
    ):
        with pytest.raises(ValueError, match="accepted forms"):
            parse_url(bad)


@pytest.mark.timeout(10)
def test_listen_makes_the_right_listener() -> None:
    sink = Collector()
    assert isinstance(listen("udp://127.0.0.1:0", sink), UDPListener)
    assert isinstance(listen("tcp://127.0.0.1:0", sink), TCPListener)
    assert isinstance(listen("unix:///tmp/x.sock", sink), UnixDatagramListener)
    assert isinstance(listen("unixstream:///tmp/x.sock", sink), UnixStreamListener)
    with pytest.raises(TypeError):
        listen("udp://127.0.0.1:0", sink, model="shared-loop")  # not a stream
    with pytest.raises(TypeError):
        listen("tcp://127.0.0.1:0", sink, mode=0o600)  # not a Unix socket
    assert UDPListener(sink).address == ("127.0.0.1", 8125)  # the loopback by default
    assert TCPListener(sink).address == ("127.0.0.1", 8125)


@pytest.mark.timeout(30)
def test_udp_ipv4_packets_arrive_intact() -> None:
    sink = Collector()
    with listen("udp://127.0.0.1:0", sink) as listener:
        assert isinstance(listener.address, tuple)
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
        assert listener.url == f"udp://127.0.0.1:{port}"
        big = b"x:1|c|#" + b"t" * 60000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(100):
                sender.sendto(f"m:{i}|c\nn:{i}|g".encode(), listener.address)
            sender.sendto(big, listener.address)
        assert sink.wait_packets(101)
        assert sink.packets[:100] == [f"m:{i}|c\nn:{i}|g".encode() for i in range(100)]
        assert sink.packets[100] == big
        stats = listener.statistics()
        assert stats.packets == 101
        assert stats.kind == "udp" and stats.model is None
        assert stats.receive_buffer is not None and stats.receive_buffer > 212992
        if os.path.exists("/proc/net/udp"):
            assert stats.kernel_drops == 0


@pytest.mark.timeout(30)
def test_udp_ipv6() -> None:
    require_ipv6_loopback()
    sink = Collector()
    with listen("udp://[::1]:0", sink) as listener:
        assert isinstance(listener.address, tuple)
        host, port = listener.address
        assert host == "::1"
        assert listener.url == f"udp://[::1]:{port}"
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"v6:1|c", ("::1", port))
        assert sink.wait_packets(1)
        assert sink.packets == [b"v6:1|c"]
        if os.path.exists("/proc/net/udp6"):
            assert listener.statistics().kernel_drops == 0


@pytest.mark.timeout(30)
@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs /proc/net/udp (Linux)")
def test_udp_kernel_drops_are_read_from_proc() -> None:
    release = threading.Event()
    first = threading.Event()

    def stalled_sink(packet: bytes) -> None:
        first.set()
        release.wait(PATIENCE)

    listener = listen("udp://127.0.0.1:0", stalled_sink, receive_buffer=4096)
    with listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"first:1|c", listener.address)
        assert first.wait(PATIENCE)  # the reader is now stuck in the sink
        for _ in range(500):
            sender.sendto(b"y" * 1000, listener.address)
        assert eventually(lambda: (listener.statistics().kernel_drops or 0) > 0)
        release.set()
    assert (listener.statistics().kernel_drops or 0) > 0  # the last figure survives close


@pytest.mark.timeout(30)
def test_unix_datagram_packets_permissions_and_cleanup() -> None:
    sink = Collector()
    with socket_dir() as directory:
        path = f"{directory}/dsd.socket"
        with listen(f"unixgram://{path}", sink) as listener:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert sorted(os.listdir(directory)) == ["dsd.socket"]  # no staging left
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                for i in range(8):
                    sender.sendto(f"u:{i}|c".encode(), path)
                sender.sendto(b"z" * 70000, path)  # larger than max_datagram: dropped
            assert sink.wait_packets(8)
            assert eventually(lambda: listener.statistics().framing_errors_total == 1)
            assert sink.packets == [f"u:{i}|c".encode() for i in range(8)]
            stats = listener.statistics()
            assert dict(stats.framing_errors) == {"datagram_too_large": 1}
            assert stats.kernel_drops is None
        assert not os.path.exists(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["unixgram", "unixstream"])
def test_unix_socket_mode_is_configurable(scheme: str) -> None:
    with socket_dir() as directory:
        path = f"{directory}/s"
        with listen(f"{scheme}://{path}", Collector(), mode=0o660):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with listen(f"{scheme}://{path}", Collector()):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["unixgram", "unixstream"])
def test_stale_socket_replaced_live_one_and_files_refused(scheme: str) -> None:
    kind = socket.SOCK_DGRAM if scheme == "unixgram" else socket.SOCK_STREAM
    with socket_dir() as directory:
        path = f"{directory}/s"
        stale = socket.socket(socket.AF_UNIX, kind)
        stale.bind(path)
        stale.close()  # the file stays: a crashed agent's leftover
        sink = Collector()
        with listen(f"{scheme}://{path}", sink) as listener:
            if scheme == "unixstream":
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.connect(path)
                    client.sendall(frame("unixstream", b"new:1|c"))
                    assert sink.wait_packets(1)
            second = listen(f"{scheme}://{path}", Collector())
            with pytest.raises(OSError) as caught:
                second.start()  # a live listener is not stolen from
            assert caught.value.errno == errno.EADDRINUSE
            assert listener.statistics().running
        assert not os.path.exists(path)
        with open(path, "w") as file:
            file.write("not a socket")
        with pytest.raises(FileExistsError):
            listen(f"{scheme}://{path}", Collector()).start()
        assert os.path.isfile(path)


@pytest.mark.timeout(30)
def test_datagram_close_is_idempotent_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    with socket_dir() as directory:
        listeners = [
            listen("udp://127.0.0.1:0", Collector()),
            listen(f"unixgram://{directory}/g", Collector()),
        ]
        for listener in listeners:
            listener.start()
            assert listener.running
        for listener in listeners:
            listener.close()
            listener.close()
            assert not listener.statistics().running
    assert set(threading.enumerate()) <= before


@pytest.mark.timeout(30)
def test_packet_ring_many_producers_one_consumer() -> None:
    ring = PacketRing(1024)
    producers, each = 4, 2000
    taken: list[bytes] = []
    done = threading.Event()

    def consume() -> None:
        while len(taken) < producers * each:
            batch = ring.take(PATIENCE)
            if not batch:
                break
            taken.extend(batch)
        done.set()

    def produce(number: int) -> None:
        i = 0
        while i < each:
            if ring.put(f"{number}:{i}".encode()):
                i += 1
            else:
                threading.Event().wait(0.0005)  # full: a real listener would count a drop

    consumer = threading.Thread(target=consume)
    consumer.start()
    threads = [threading.Thread(target=produce, args=(n,)) for n in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(PATIENCE * 3)
    assert done.wait(PATIENCE * 3)
    consumer.join(PATIENCE)
    by_producer: dict[str, list[int]] = {}
    for packet in taken:
        number, i = packet.decode().split(":")
        by_producer.setdefault(number, []).append(int(i))
    assert by_producer == {str(n): list(range(each)) for n in range(producers)}
    stats = ring.statistics()
    assert stats.put == stats.taken == producers * each
    assert stats.depth == 0


@pytest.mark.timeout(10)
def test_packet_ring_drops_when_full_and_after_close() -> None:
    ring = PacketRing(4)
    assert all(ring.put(b"p%d" % i) for i in range(4))
    assert ring.put(b"extra") is False
    assert ring.take(0) == [b"p0", b"p1", b"p2", b"p3"]
    assert ring.take(0) == []
    ring.put(b"last")
    ring.close()
    assert ring.put(b"late") is False
    assert ring.take() == [b"last"]  # what was accepted is still delivered
    assert ring.take() == []  # then a closed, empty ring returns at once
    stats = ring.statistics()
    assert dict(stats.dropped) == {"ring_full": 1, "closed": 1}
    assert stats.dropped_total == 2
    with pytest.raises(ValueError, match="power of two"):
        PacketRing(1000)


@pytest.mark.timeout(30)
def test_packet_ring_as_the_sink_of_a_listener() -> None:
    ring = PacketRing(256)
    with listen("udp://127.0.0.1:0", ring) as listener:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"r:1|c", listener.address)
        assert ring.take(PATIENCE) == [b"r:1|c"]
