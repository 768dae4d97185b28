"""Helpers for the listener tests: a collecting sink, senders that frame like the
client, short socket paths.

Synchronisation is on the sink's condition variable (``wait_for`` with a bound) or on
a socket operation with a timeout, never on ``sleep``. Conditions only visible in
``statistics()`` are polled with an ``Event.wait`` between polls, bounded by
``PATIENCE``.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: How long a test waits for something that should happen at once (a loaded machine).
PATIENCE = 10.0
_LENGTH = struct.Struct("<I")


class Collector:
    """A thread-safe sink that remembers every packet and wakes waiters."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.packets: list[bytes] = []
        self.line_count = 0

    def __call__(self, packet: bytes) -> None:
        with self._cond:
            self.packets.append(packet)
            self.line_count += packet.count(b"\n") + 1
            self._cond.notify_all()

    def wait_packets(self, n: int, timeout: float = PATIENCE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.packets) >= n, timeout)

    def wait_lines(self, n: int, timeout: float = PATIENCE) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.line_count >= n, timeout)

    def lines(self) -> list[bytes]:
        with self._cond:
            return [line for packet in self.packets for line in packet.split(b"\n")]


def eventually(predicate: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll ``predicate`` (e.g. on ``statistics()``) until true or ``timeout``."""
    pause = threading.Event()
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            if predicate():
                return True
            pause.wait(0.005)
        return predicate()
    finally:
        timer.cancel()


@contextmanager
def socket_dir() -> Iterator[str]:
    """A fresh directory with a short path (Unix socket paths are limited to ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="cva-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def frame(kind: str, packet: bytes) -> bytes:
    """``packet`` as the client writes it on a ``kind`` stream."""
    if kind == "unixstream":
        return _LENGTH.pack(len(packet)) + packet
    return packet + b"\n"


def connect(kind: str, address: tuple[str, int] | str) -> socket.socket:
    if kind == "unixstream":
        assert isinstance(address, str)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(PATIENCE)
        sock.connect(address)
        return sock
    assert isinstance(address, tuple)
    return socket.create_connection(address, timeout=PATIENCE)


def reads_eof(sock: socket.socket) -> bool:
    """True if the peer closed the connection (end of stream or reset) within PATIENCE."""
    sock.settimeout(PATIENCE)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def agent_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("conveyor-agent")}
