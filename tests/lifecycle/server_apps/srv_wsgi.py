"""A WSGI app for gunicorn: each request records one increment of ``srv.requests``.

The client is created here, at import: with ``preload_app = True`` that happens in the
gunicorn master, before it forks its workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from srv_client import make_client

METRIC = "srv.requests"

client = make_client()

StartResponse = Callable[[str, list[tuple[str, str]]], object]


def application(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    client.increment(METRIC)
    body = str(os.getpid()).encode()  # which worker served it
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
