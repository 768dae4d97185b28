"""A real HTTP server for the delivery tests, on loopback, that can be slowed, answer
errors (500/503/429 with Retry-After), or drop connections; and a fake clock."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server answers to one request: a status (and headers), or ``drop`` to
    close the connection without answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class Server:
    """Records every item it accepts (``id`` -> how many times), in arrival order."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.script: list[Reply] = []  # consumed first, one per request
        self.default = Reply()
        self.delay = 0.0  # seconds each request takes (a slow endpoint)
        self.gate: threading.Event | None = None  # requests wait for it (a stuck endpoint)
        self.requests = 0
        self.request_times: list[float] = []
        self.statuses: list[int] = []
        self.items: list[dict[str, Any]] = []
        self.accepted_ids: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self.active = 0
        self.connections = 0
        self.max_active = 0
        self.active_reached: dict[int, threading.Event] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server.connections += 1

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                server._enter(dict(self.headers))
                try:
                    if server.gate is not None:
                        server.gate.wait(30)
                    if server.delay:
                        time.sleep(server.delay)
                    reply = server._next_reply()
                    if reply.drop:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if reply.status < 300:
                        server._accept(json.loads(body))
                    with server.lock:
                        server.statuses.append(reply.status)
                    payload = b'{"ok":true}' if reply.status < 300 else b'{"error":"no"}'
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                finally:
                    server._leave()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/events"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _enter(self, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests += 1
            self.request_times.append(time.monotonic())
            self.headers_seen.append(headers)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            for n, event in self.active_reached.items():
                if self.active >= n:
                    event.set()
            self.lock.notify_all()

    def _leave(self) -> None:
        with self.lock:
            self.active -= 1
            self.lock.notify_all()

    def _next_reply(self) -> Reply:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def _accept(self, batch: list[dict[str, Any]]) -> None:
        with self.lock:
            for entry in batch:
                self.items.append(entry)
                self.accepted_ids[entry["id"]] += 1
            self.lock.notify_all()

    def when_active(self, n: int) -> threading.Event:
        with self.lock:
            event = self.active_reached.setdefault(n, threading.Event())
            if self.active >= n:
                event.set()
            return event

    def wait(self, predicate: Callable[[Server], bool], timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self), timeout)

    def data(self) -> list[Any]:
        with self.lock:
            return [entry["data"] for entry in self.items]

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def serving() -> Iterator[Server]:
    server = Server()
    try:
        yield server
    finally:
        server.close()


def dead_url() -> str:
    """A loopback URL nobody listens on (connection refused at once)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1/events"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def books_balance(stats: Any) -> bool:
    return bool(
        stats.submitted + stats.recovered
        == stats.delivered + stats.rejected_total + stats.dropped_total + stats.pending
    )
