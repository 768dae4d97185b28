"""The metrics client the server apps record with, chosen by the harness's environment.

``SRV_CLIENT`` names it:

* ``conveyor``: ``conveyor.Client`` with its defaults;
* ``dogstatsd``: ``datadog.DogStatsd`` with its defaults (one datagram per call, sent
  on the caller's thread);
* ``dogstatsd-bg-agg``: ``datadog.DogStatsd`` with the background sender and client-side
  aggregation on (its own threads, like conveyor);
* ``threadstats``: ``datadog.ThreadStats`` started at import, posting to the HTTP intake
  at ``SRV_API_URL`` (the harness's, on the loopback).

``SRV_FLUSH_INTERVAL`` sets conveyor's ``flush_interval`` (its default otherwise). The
UDP clients send to ``127.0.0.1:SRV_STATSD_PORT``. Every app creates its client at
import, before any fork, as most applications do.
"""

from __future__ import annotations

import os
from typing import Protocol

KINDS = ("conveyor", "dogstatsd", "dogstatsd-bg-agg", "threadstats")


class Recorder(Protocol):
    """What the apps call: the one method every client under comparison shares."""

    def increment(self, metric: str) -> None: ...


def make_client() -> Recorder:
    kind = os.environ.get("SRV_CLIENT", "conveyor")
    host = "127.0.0.1"
    port = int(os.environ.get("SRV_STATSD_PORT", "8125"))
    if kind == "conveyor":
        from conveyor import Client

        interval = os.environ.get("SRV_FLUSH_INTERVAL")
        if interval:
            return Client(host=host, port=port, flush_interval=float(interval))
        return Client(host=host, port=port)
    if kind == "dogstatsd":
        from datadog.dogstatsd.base import DogStatsd

        return DogStatsd(host=host, port=port)
    if kind == "dogstatsd-bg-agg":
        from datadog.dogstatsd.base import DogStatsd

        return DogStatsd(
            host=host, port=port, disable_background_sender=False, disable_aggregation=False
        )
    if kind == "threadstats":
        from datadog import initialize
        from datadog.threadstats.base import ThreadStats

        # host_name set: otherwise datadog looks the host name up, cloud metadata
        # services included; this harness talks to the loopback only.
        initialize(
            api_key="lifecycle",
            app_key="lifecycle",
            api_host=os.environ["SRV_API_URL"],
            host_name="lifecycle-harness",
        )
        stats = ThreadStats()  # type: ignore[no-untyped-call]
        stats.start()  # type: ignore[no-untyped-call]  # its defaults: a flush thread
        return stats  # every 10 s and a flush at exit (atexit)
    raise ValueError(f"SRV_CLIENT must be one of {KINDS}, not {kind!r}")
