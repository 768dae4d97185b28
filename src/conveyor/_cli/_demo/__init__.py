"""``conveyor demo``: the whole pipeline, on this machine, checking its own books.

What runs (each piece is real; nothing is simulated but the business):

* ``conveyor agent`` as a subprocess, with its defaults (DogStatsD on UDP
  127.0.0.1:8125, readable flushes on stdout, Prometheus on 127.0.0.1:9102) plus a
  JSON-lines file in the run directory and a 1 s flush interval, so flushes are seen
  as they happen. ``--port`` and ``--prometheus-port`` move it off busy ports.
* A shop (``_shop.py``, WSGI) under gunicorn with ``--preload`` and 3 sync (prefork)
  workers; one ``conveyor.Client`` made at import, in the master, before the fork.
* Its jobs (``_jobs.py``) under a Celery worker with the prefork pool (2 children,
  recycled by ``--max-tasks-per-child``), on kombu's ``filesystem://`` broker and the
  ``file://`` result backend in the run directory: no server to install.
* A load generator (``_load.py``): threads of the demo process itself, pacing HTTP
  requests to the shop and queuing a job per order, recording through a client too.
* Errors go two ways: as metrics and events through the client (``shop.errors``,
  "checkout failed"), and as structured reports through a ``conveyor.Dispatcher`` over
  HTTP to a receiver the demo runs on the loopback (``_received.ErrorReceiver``), which
  stands in for an error tracker: the delivery path of ``capture_exceptions``, fed by
  the app's own ``except`` (a WSGI server catches what a view raises, so no hook
  would see it).

The proof: every process keeps its own books (``_books.py``: what it asked conveyor to
record, per metric, written at its exit after conveyor's exit flush), and the demo
compares their sum, metric by metric, with what the agent wrote to its JSON-lines file
and what the error receiver got (``_received.py``). One gunicorn worker is recycled
mid-run with SIGTERM, Celery recycles its children, and everything stops the way
production stops it (SIGTERM to each master); the agent gets SIGTERM last and writes a
final flush. Exit status: 0 if every metric, event and error matches exactly, 1 if
anything was lost or extra, 2 for a set-up problem (a missing package, a busy port),
3 if a server did not start or stalled (each phase has a deadline).

Choices: the live view reads each process's books, rewritten every half second, rather
than the agent's counts, so it shows per process what was recorded, sent and dropped;
the agent's flushes are counted from its stdout. The comparison reads the JSON lines,
which hold every flush exactly as the agent produced it, rather than scraping
Prometheus; the Prometheus endpoint is scraped once mid-run to show that it serves
them.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1-65535)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=_port,
        default=8125,
        help="UDP port for the agent's DogStatsD listener on 127.0.0.1 (default 8125)",
    )
    parser.add_argument(
        "--prometheus-port",
        type=_port,
        default=9102,
        help="TCP port for the agent's Prometheus endpoint on 127.0.0.1 (default 9102)",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        default=20.0,
        metavar="S",
        help="seconds of load (default 20; the whole demo takes about 10 s more)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where the logs, the books and the agent's JSON lines go (default: a new "
        "temporary directory, kept)",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status (see the module docstring)."""
    from ._run import Settings
    from ._run import run_demo as run

    return run(
        Settings(
            port=args.port,
            prometheus_port=args.prometheus_port,
            duration=args.duration,
            run_dir=args.run_dir,
        )
    )
