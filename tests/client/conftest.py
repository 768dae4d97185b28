"""Real receivers for the client's tests: a UDP socket, a Unix datagram socket, and a
transport that can be stalled on purpose."""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from conveyor.protocol import Metric, parse_packet
from conveyor.transport import Transport, TransportError, TransportStatistics


@dataclass
class Received:
    """What a receiver got, folded the way an agent would fold it."""

    packets: list[bytes] = field(default_factory=list)
    counts: dict[tuple[str, tuple[str, ...]], float] = field(
        default_factory=lambda: defaultdict(float)
    )
    gauges: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    sets: dict[tuple[str, tuple[str, ...]], set[str]] = field(
        default_factory=lambda: defaultdict(set)
    )
    samples: dict[tuple[str, str, tuple[str, ...]], list[float]] = field(
        default_factory=lambda: defaultdict(list)
    )
    sample_counts: dict[tuple[str, str, tuple[str, ...]], float] = field(
        default_factory=lambda: defaultdict(float)
    )
    metrics: list[Metric] = field(default_factory=list)
    events: list[object] = field(default_factory=list)
    service_checks: list[object] = field(default_factory=list)
    bad_lines: int = 0

    def add(self, packet: bytes) -> None:
        self.packets.append(packet)
        result = parse_packet(packet)
        self.bad_lines += result.bad_lines
        self.events.extend(result.events)
        self.service_checks.extend(result.service_checks)
        for metric in result.metrics:
            self.metrics.append(metric)
            key = (metric.name, tuple(sorted(metric.tags)))
            if metric.type == "c":
                self.counts[key] += sum(metric.values) / metric.sample_rate
            elif metric.type == "g":
                self.gauges[key] = metric.values[-1]
            elif metric.type == "s":
                assert metric.set_value is not None
                self.sets[key].add(metric.set_value)
            else:
                skey = (metric.type, *key)
                self.samples[skey].extend(metric.values)
                self.sample_counts[skey] += len(metric.values) / metric.sample_rate


class DatagramReceiver:
    """A bound datagram socket; :meth:`take` reads what is already there, without waiting
    (the tests first rendez-vous with the client's sender through ``flush()``)."""

    def __init__(self, family: socket.AddressFamily, address: tuple[str, int] | str) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(address)
        self.received = Received()

    def take(self) -> Received:
        self.sock.setblocking(False)
        while True:
            try:
                packet = self.sock.recv(65536)
            except BlockingIOError:
                return self.received
            self.received.add(packet)

    def wait_for_packet(self, timeout: float = 5.0) -> Received:
        self.sock.settimeout(timeout)
        self.received.add(self.sock.recv(65536))
        return self.take()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp_receiver() -> Iterator[DatagramReceiver]:
    receiver = DatagramReceiver(socket.AF_INET, ("127.0.0.1", 0))
    host, port = receiver.sock.getsockname()
    receiver.url = f"udp://{host}:{port}"  # type: ignore[attr-defined]
    yield receiver
    receiver.close()


class StalledTransport(Transport):
    """A transport whose ``send`` blocks until released: the sender is then stuck, as
    it would be behind a full socket buffer, and the client's queues fill up."""

    url = "stalled://test"
    max_packet_size = 1432

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.received = Received()
        self._lock = threading.Lock()

    def send(self, packet: bytes) -> None:
        self.entered.set()
        if not self.release.wait(30):
            raise TransportError("send", "stalled for too long")
        with self._lock:
            self.received.add(packet)

    def close(self) -> None:
        self.release.set()

    def statistics(self) -> TransportStatistics:
        raise NotImplementedError
