"""Each demo process's own books: what it asked conveyor to record, per metric.

The demo proves "nothing recorded is lost" by comparing two accounts kept apart: these
books, kept by the application processes themselves, and what the agent wrote to its
JSON-lines file. A process's books are one JSON file in the run directory,
``books/<role>-<pid>.json``, rewritten at most every half second while it records (the
live view reads them) and a last time when the process ends, with ``"final": true``:

* at interpreter exit (gunicorn workers, recycled or shut down; the load generator),
  from an ``atexit`` hook registered *before* :mod:`conveyor.lifecycle` is imported.
  ``atexit`` runs its hooks last-registered first, so this one runs after conveyor's
  exit flush and the books show what the client sent, not what it still held;
* in Celery's prefork children, which end with ``os._exit`` and run no ``atexit``
  hook, from Celery's ``worker_process_shutdown`` signal, connected after conveyor
  connected its own flush to it (see ``_jobs.py``).

What is tallied, per (kind, name): counters the sum of their values, histograms and
distributions their number of samples, events their number per title, errors their
number per exception type. The demo records without sampling, so each call is one
value and the sums are exact integers on both sides.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Environment variables the orchestrator sets for the application processes.
RUN_DIR_VARIABLE = "CONVEYOR_DEMO_RUN_DIR"
ERRORS_URL_VARIABLE = "CONVEYOR_DEMO_ERRORS_URL"

_PROGRESS_EVERY = 0.5  # seconds between rewrites of a running process's books
_open_books: list[Books] = []


def _close_all_at_exit() -> None:
    for books in list(_open_books):
        books.close("exit")


atexit.register(_close_all_at_exit)
#: False if conveyor.lifecycle was imported first: then the hook above runs *before*
#: conveyor's exit flush, and the books show data still pending at exit as pending.
EXIT_HOOK_AFTER_FLUSH = "conveyor.lifecycle" not in sys.modules

from conveyor.client import Client  # noqa: E402  (after atexit.register: see above)
from conveyor.client._options import TagsArg  # noqa: E402


def _note_pending_at_exit() -> None:
    for books in list(_open_books):
        books.note_pending()


# Registered after conveyor.lifecycle's hook, so it runs before it: what the client still
# held when the process began to exit, which conveyor's exit flush then has to send.
atexit.register(_note_pending_at_exit)

Key = tuple[str, str]  # (kind, name)


class Books:
    """One process's tally, written to ``<run dir>/books/<role>-<pid>.json``.

    Without a run directory (the environment variable unset) it tallies but writes
    nothing: the app modules can then be imported outside the demo.
    """

    def __init__(self, role: str, run_dir: str | None = None) -> None:
        self.role = role
        directory = run_dir if run_dir is not None else os.environ.get(RUN_DIR_VARIABLE)
        self._directory = Path(directory, "books") if directory else None
        self._client: Client | None = None
        self._errors: Any = None  # a conveyor.Dispatcher, if the process reports errors
        self._reset()
        _open_books.append(self)
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        """At creation, and in a forked child: what the parent tallied is the parent's."""
        self._lock = threading.Lock()
        self._tally: Counter[Key] = Counter()
        self._pid = os.getpid()
        self._started_at = time.time()
        self._next_write = 0.0
        self._closed = False
        self._pending_at_exit: int | None = None

    def attach(self, client: Client | None = None, errors: Any = None) -> None:
        """The client and the error dispatcher whose own statistics go in the books."""
        if client is not None:
            self._client = client
        if errors is not None:
            self._errors = errors

    def add(self, kind: str, name: str, amount: int = 1) -> None:
        """Tally ``amount`` for (``kind``, ``name``); rewrite the file if it is due."""
        with self._lock:
            self._tally[(kind, name)] += amount
        now = time.monotonic()
        if now >= self._next_write and self._directory is not None:
            self._next_write = now + _PROGRESS_EVERY
            self.write(final=False, ended="")

    def tally(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._tally)

    def note_pending(self) -> None:
        """Remember how much the client holds now: called as the process begins to end,
        before conveyor's exit flush."""
        if self._client is not None and self._pending_at_exit is None:
            self._pending_at_exit = self._client.statistics().pending

    def close(self, ended: str) -> None:
        """Write the final books (once); ``ended`` says how the process ended."""
        if self._closed or self._pid != os.getpid():
            return
        self._closed = True
        if self._tally or (self._client is not None and self._client.statistics().recorded):
            self.write(final=True, ended=ended)

    def write(self, *, final: bool, ended: str) -> None:
        if self._directory is None:
            return
        record: dict[str, Any] = {
            "role": self.role,
            "pid": os.getpid(),
            "final": final,
            "ended": ended,
            "started_at": self._started_at,
            "written_at": time.time(),
            "exit_hook_after_flush": EXIT_HOOK_AFTER_FLUSH,
            "tally": [[kind, name, amount] for (kind, name), amount in self.tally().items()],
        }
        if self._client is not None:
            stats = self._client.statistics()
            record["client"] = {
                "recorded": stats.recorded,
                "sent": stats.sent,
                "dropped": stats.dropped_total,
                "pending": stats.pending,
                "pending_at_exit": self._pending_at_exit,
                "dropped_by_reason": {k: v for k, v in stats.dropped.items() if v},
            }
        if self._errors is not None:
            delivery = self._errors.statistics()
            record["errors"] = {
                "submitted": delivery.submitted,
                "delivered": delivery.delivered,
                "rejected": delivery.rejected_total,
                "dropped": delivery.dropped_total,
                "pending": delivery.pending,
            }
        path = self._directory / f"{self.role}-{os.getpid()}.json"
        spare = path.with_suffix(".tmp")
        # Never fail the application over its demo books (a full disk, a removed dir).
        with contextlib.suppress(OSError):
            self._directory.mkdir(parents=True, exist_ok=True)
            spare.write_text(json.dumps(record), encoding="utf-8")
            os.replace(spare, path)  # readers never see half a file


class TalliedClient(Client):
    """A :class:`conveyor.Client` that also tallies what it is asked to record.

    Only the calls the demo makes are tallied (counters, histograms, distributions,
    events); the application code reads as ordinary conveyor code.
    """

    def __init__(self, books: Books, **options: Any) -> None:
        super().__init__(**options)
        self.books = books
        books.attach(client=self)

    def increment(
        self,
        metric: str,
        value: float = 1,
        tags: TagsArg = None,
        sample_rate: float | None = None,
    ) -> None:
        _unsampled(sample_rate)
        super().increment(metric, value, tags)
        self.books.add("counter", metric, int(value))

    def count(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        _unsampled(sample_rate)
        super().count(metric, value, tags)
        self.books.add("counter", metric, int(value))

    def histogram(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        _unsampled(sample_rate)
        super().histogram(metric, value, tags)
        self.books.add("histogram", metric)

    def distribution(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        _unsampled(sample_rate)
        super().distribution(metric, value, tags)
        self.books.add("distribution", metric)

    def event(
        self,
        title: str,
        message: str,
        alert_type: str | None = None,
        aggregation_key: str | None = None,
        source_type_name: str | None = None,
        date_happened: int | None = None,
        priority: str | None = None,
        tags: TagsArg = None,
        hostname: str | None = None,
    ) -> None:
        super().event(
            title,
            message,
            alert_type,
            aggregation_key,
            source_type_name,
            date_happened,
            priority,
            tags,
            hostname,
        )
        self.books.add("event", title)


def _unsampled(sample_rate: float | None) -> None:
    if sample_rate not in (None, 1, 1.0):
        raise ValueError("the demo's tally counts every call: record without sample_rate")


class ErrorReporter:
    """Errors as structured reports, delivered over HTTP by a :class:`conveyor.Dispatcher`
    to the orchestrator's loopback receiver (a stand-in for an error tracker), and
    tallied per exception type."""

    def __init__(self, books: Books, url: str | None = None) -> None:
        from conveyor import Dispatcher, HTTPTransport

        self.books = books
        target = url or os.environ.get(ERRORS_URL_VARIABLE)
        if not target:
            raise RuntimeError(f"set {ERRORS_URL_VARIABLE} to the URL errors are posted to")
        self.dispatcher = Dispatcher(HTTPTransport(target), max_workers=2)
        books.attach(errors=self.dispatcher)

    def report(self, error: BaseException, **context: Any) -> None:
        from conveyor.delivery import exception_fields

        fields = exception_fields(type(error), error, error.__traceback__)
        self.dispatcher.submit(
            {
                "type": "exception",
                "role": self.books.role,
                "process": os.getpid(),
                "exception": fields,
                "context": context,
            }
        )
        self.books.add("error", fields["type"])


@dataclass(frozen=True)
class ProcessBooks:
    """One process's books, as read back by the orchestrator."""

    role: str
    pid: int
    final: bool
    ended: str
    written_at: float
    tally: dict[Key, int]
    client: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] = field(default_factory=dict)
    exit_hook_after_flush: bool = True


def read_books(run_dir: Path) -> list[ProcessBooks]:
    """Every process's latest books in ``run_dir``, in pid order."""
    found = []
    for path in sorted((run_dir / "books").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # replaced atomically, so only a vanished file lands here
        found.append(
            ProcessBooks(
                role=record["role"],
                pid=int(record["pid"]),
                final=bool(record["final"]),
                ended=str(record["ended"]),
                written_at=float(record["written_at"]),
                tally={(kind, name): int(amount) for kind, name, amount in record["tally"]},
                client=dict(record.get("client", {})),
                errors=dict(record.get("errors", {})),
                exit_hook_after_flush=bool(record.get("exit_hook_after_flush", True)),
            )
        )
    return sorted(found, key=lambda books: books.pid)
