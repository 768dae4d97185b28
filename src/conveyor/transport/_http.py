"""`HTTPTransport`: batches of JSON items to an HTTP endpoint, over urllib3.

urllib3 is an optional dependency (``pip install conveyor[http]``) and is imported on
first use only, so ``import conveyor`` and the DogStatsD client never load it.

Why these choices:

* **Pooled keep-alive connections** (one pool, ``pool_size`` connections): a TLS
  handshake costs more than a small request; a pool lets every worker of a
  dispatcher keep its own connection warm.
* **TLS verification on**, always, with the system's trust store (or ``ca_certs``).
  There is no switch to turn it off: a telemetry client that accepts any certificate
  hands credentials to whoever sits on the path.
* **Connect and read timeouts** (3 s and 30 s by default): a blackholed endpoint must
  not pin a worker forever. urllib3's own retries are off; the dispatcher retries with
  its own policy, and a stale keep-alive connection is retried once at once (the
  server closed it while idle: not a failure of the endpoint).
* **A batch is a JSON array** of ``{"id": <idempotency key>, "data": <item>}``, bounded
  by item count and bytes, gzip-compressed above ``gzip_min_bytes``. The key is fixed
  when the item is accepted and travels with every retry (and survives a restart
  through the spool), so a receiver can de-duplicate at-least-once delivery.
* **Credentials never leak**: headers are kept out of ``repr``; the URL shown in
  ``repr``, logs and reasons has its user info and query removed; failures are
  reported by exception class, never by urllib3's message (which embeds the URL).
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class HTTPResponse:
    """How one request went (see :class:`conveyor.delivery.Outcome`)."""

    status: int | None
    reason: str
    retry_after: str | None = None


def redact(url: str) -> str:
    """``url`` without user info, query or fragment: safe for logs and reprs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class HTTPTransport:
    """POSTs batches of JSON items to ``url``.

    Args:
        url: ``http://`` or ``https://`` endpoint.
        headers: sent with every request (e.g. ``Authorization``); never shown.
        connect_timeout, read_timeout: seconds.
        max_batch_items, max_batch_bytes: the bounds of one request body (before
            compression); an item larger than ``max_batch_bytes`` on its own is dropped.
        gzip_min_bytes: bodies at least this large are gzip-compressed (0: always;
            None: never).
        pool_size: kept-alive connections (one per concurrent worker is enough).
        ca_certs: a CA bundle to verify the server with, instead of the system's.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 30.0,
        max_batch_items: int = 500,
        max_batch_bytes: int = 1_000_000,
        gzip_min_bytes: int | None = 1024,
        pool_size: int = 8,
        ca_certs: str | None = None,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in {"http", "https"}:
            raise ValueError(f"HTTPTransport needs an http:// or https:// URL, not {redact(url)!r}")
        if max_batch_items < 1 or max_batch_bytes < 64:
            raise ValueError("max_batch_items must be >= 1 and max_batch_bytes >= 64")
        self._url = url
        self._safe_url = redact(url)
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_items = max_batch_items
        self._max_bytes = max_batch_bytes
        self._gzip_min = gzip_min_bytes
        self._pool_size = pool_size
        self._ca_certs = ca_certs
        self._lock = threading.Lock()
        self._pool: Any = None
        self._pid = os.getpid()
        self._closed = False

    # -- what the dispatcher reads -------------------------------------------------------

    @property
    def url(self) -> str:
        return self._safe_url

    @property
    def max_batch_items(self) -> int:
        return self._max_items

    @property
    def max_batch_bytes(self) -> int:
        return self._max_bytes

    def encode(self, key: str, item: object) -> bytes:
        return json.dumps(
            {"id": key, "data": item}, separators=(",", ":"), ensure_ascii=False
        ).encode()

    # -- sending -------------------------------------------------------------------------

    def _connection_pool(self) -> Any:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        import urllib3  # optional: pip install conveyor[http]

        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pid = os.getpid()
                tls: dict[str, Any] = {}
                if urlsplit(self._url).scheme == "https":
                    tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": self._ca_certs}
                self._pool = urllib3.connection_from_url(
                    self._url,
                    maxsize=self._pool_size,
                    block=False,
                    timeout=urllib3.Timeout(connect=self._connect_timeout, read=self._read_timeout),
                    retries=False,
                    **tls,
                )
            return self._pool

    def send(  # noqa: PLR0911  (one return per kind of failure)
        self, encoded: list[bytes], timeout: float | None = None
    ) -> HTTPResponse:
        if self._closed:
            return HTTPResponse(None, "closed")
        body = b"[" + b",".join(encoded) + b"]"
        headers = dict(self._headers)
        if self._gzip_min is not None and len(body) >= self._gzip_min:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        import urllib3

        pool = self._connection_pool()
        path = self._path()
        limits: dict[str, Any] = {}
        # At exit (and inline after a hookless fork) the request must end by a deadline:
        # `timeout` bounds the whole send, the retry of a dropped connection included.
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in (0, 1):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return HTTPResponse(None, "timeout")
                limits["timeout"] = urllib3.Timeout(
                    total=left,
                    connect=min(self._connect_timeout, left),
                    read=min(self._read_timeout, left),
                )
            try:
                response = pool.urlopen(
                    "POST",
                    path,
                    body=body,
                    headers=headers,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=True,
                    release_conn=True,
                    **limits,
                )
            except urllib3.exceptions.ProtocolError:
                # Often a kept-alive connection the server closed while it was idle:
                # one immediate retry on a fresh connection, then a real failure.
                if attempt == 0:
                    continue
                return HTTPResponse(None, "connection_dropped")
            except urllib3.exceptions.TimeoutError as error:
                kind = "connect_timeout" if "connect" in type(error).__name__.lower() else "timeout"
                return HTTPResponse(None, kind)
            except urllib3.exceptions.SSLError:
                return HTTPResponse(None, "tls")
            except urllib3.exceptions.NewConnectionError:
                return HTTPResponse(None, "connect")
            except (urllib3.exceptions.HTTPError, OSError) as error:
                return HTTPResponse(None, type(error).__name__)
            status = int(response.status)
            reason = f"{status} {response.reason or ''}".strip()
            return HTTPResponse(status, reason, response.headers.get("Retry-After"))
        return HTTPResponse(None, "connection_dropped")  # pragma: no cover

    def _path(self) -> str:
        parts = urlsplit(self._url)
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's sockets without closing them (the
        parent still uses its connections), and a fresh lock."""
        self._lock = threading.Lock()
        self._pool = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"HTTPTransport({self._safe_url!r})"


__all__ = ["HTTPResponse", "HTTPTransport", "redact"]
