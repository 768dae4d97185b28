"""Helpers for the transport tests: a fake clock, short socket paths, readers for frames.

Synchronisation is always on a socket (``recv``/``accept`` with a generous timeout),
an ``Event`` or a ``join``, never on ``sleep``.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

#: How long a test waits for something that should happen at once (a loaded machine).
PATIENCE = 10.0
#: The back-off's ceiling before jitter: advancing a fake clock this far always
#: makes the next attempt due.
MAX_DELAY = 5.0
FIRST_DELAY = 0.05


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def socket_dir() -> Iterator[str]:
    """A fresh directory with a short path (Unix socket paths are limited to ~107 bytes)."""
    base = "/tmp" if os.path.isdir("/tmp") else None
    path = tempfile.mkdtemp(prefix="cvt-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def udp_server(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    server.settimeout(PATIENCE)
    return server


def tcp_server(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind((host, 0))
    server.listen(8)
    server.settimeout(PATIENCE)
    return server


def unix_stream_server(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    server.settimeout(PATIENCE)
    return server


def unix_datagram_server(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(PATIENCE)
    return server


def accept(server: socket.socket) -> socket.socket:
    conn, _ = server.accept()
    conn.settimeout(PATIENCE)
    return conn


def recv_exact(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from a stream (fails the test at end of stream)."""
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            pytest.fail(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_frame(conn: socket.socket) -> bytes:
    """One length-prefixed frame of the Datadog Agent's unixstream format."""
    (length,) = struct.unpack("<I", recv_exact(conn, 4))
    return recv_exact(conn, length)


def read_to_end(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(1 << 16):
        data += chunk
    return data


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The complete frames in ``data`` and whatever incomplete rest follows them."""
    frames = []
    while len(data) >= 4:
        (length,) = struct.unpack("<I", data[:4])
        if len(data) < 4 + length:
            break
        frames.append(data[4 : 4 + length])
        data = data[4 + length :]
    return frames, data
