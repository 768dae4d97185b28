"""The demo's web application: a tiny shop, served by gunicorn's prefork workers.

* ``/order?items=N`` places an order: ``shop.orders`` +1, ``shop.order.items`` +N, the
  order's value into the ``shop.order.value`` distribution;
* ``/search?q=...``: the number of hits into the ``shop.search.hits`` histogram;
* ``/fail`` is a checkout whose payment is declined: the exception is reported to the
  error receiver (``ErrorReporter``), counted in ``shop.errors`` and announced as an
  event, and the client gets a 500;
* every request: ``shop.requests`` +1 (tagged by endpoint and status) and its duration
  into the ``shop.request.duration`` histogram.

The client and the error dispatcher are made at import: with ``preload_app`` that is in
gunicorn's master, before the fork, once for the life of each process, as an
application makes them. Nothing here calls ``flush()``: conveyor.lifecycle resets
both in every worker and flushes them when the worker exits, recycled or shut down.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from ._books import Books, ErrorReporter, TalliedClient

books = Books("web")
metrics = TalliedClient(books)  # where to send: CONVEYOR_URL, set by the demo
errors = ErrorReporter(books)

StartResponse = Callable[[str, list[tuple[str, str]]], object]


class PaymentDeclinedError(Exception):
    """What ``/fail`` raises: a card the payment provider refused."""


def _order(query: dict[str, list[str]]) -> dict[str, object]:
    items = max(1, min(50, int(query.get("items", ["1"])[0])))
    value = items * 12.5
    metrics.increment("shop.orders")
    metrics.count("shop.order.items", items)
    metrics.distribution("shop.order.value", value)
    return {"order": zlib.crc32(os.urandom(8)), "items": items, "value": value}


def _search(query: dict[str, list[str]]) -> dict[str, object]:
    words = query.get("q", [""])[0]
    hits = zlib.crc32(words.encode()) % 40
    metrics.histogram("shop.search.hits", hits)
    return {"q": words, "hits": hits}


def _checkout() -> dict[str, object]:
    raise PaymentDeclinedError("card ending 0002 declined by the payment provider")


def application(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    started = time.perf_counter()
    path = str(environ.get("PATH_INFO") or "/")
    query = parse_qs(str(environ.get("QUERY_STRING") or ""))
    status = "200 OK"
    try:
        if path == "/order":
            reply = _order(query)
        elif path == "/search":
            reply = _search(query)
        elif path == "/fail":
            reply = _checkout()
        else:
            status, reply = "404 Not Found", {"error": f"no page {path}"}
    except PaymentDeclinedError as error:
        errors.report(error, path=path)
        metrics.increment("shop.errors", tags=["error:payment_declined"])
        metrics.event(
            "checkout failed",
            str(error),
            alert_type="error",
            tags=["endpoint:/fail"],
        )
        status, reply = "500 Internal Server Error", {"error": str(error)}
    code = status.split()[0]
    metrics.increment("shop.requests", tags=[f"endpoint:{path}", f"status:{code}"])
    metrics.histogram(
        "shop.request.duration",
        (time.perf_counter() - started) * 1000,
        tags=[f"endpoint:{path}"],
    )
    body = json.dumps({**reply, "pid": os.getpid()}).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
