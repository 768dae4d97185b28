"""The demo's background jobs: a Celery app run by ``celery worker --pool=prefork``.

* ``send_receipt(order, items)``: ``jobs.receipts`` +1 and ``jobs.receipt.lines`` +items;
  every tenth order's mailbox is full: the error is reported to the error receiver,
  counted in ``jobs.errors``, announced as an event, and the task fails;
* ``reindex(documents)``: ``jobs.reindexed`` +documents;
* every task: its duration into the ``jobs.duration`` histogram.

The client is made at import, in the worker's main process, before the pool forks its
children, and ``--max-tasks-per-child`` recycles the children during the run. Celery's
children end with ``os._exit`` (no ``atexit``): conveyor.lifecycle flushes them from
Celery's ``worker_process_shutdown`` signal, which it connected when the client was
made (``celery.signals`` is imported first, below); the books' receivers are connected
around it.
"""

from __future__ import annotations

import os
import time

from celery import Celery, signals  # type: ignore[import-untyped]

from ._books import Books, ErrorReporter, TalliedClient
from ._jobs_config import JOBS_DIR_VARIABLE, REINDEX, SEND_RECEIPT, configure

app = Celery("conveyor_demo")
if JOBS_DIR_VARIABLE in os.environ:
    configure(app, os.environ[JOBS_DIR_VARIABLE])

books = Books("jobs")


def _note_pending(*args: object, **kwargs: object) -> None:
    books.note_pending()


def _close_books(*args: object, **kwargs: object) -> None:
    books.close("exit")


# Celery calls a signal's receivers in the order they were connected: the first one
# notes what the client holds, conveyor's (connected when the client joins
# conveyor.lifecycle, just below) flushes it, the last one writes the books.
signals.worker_process_shutdown.connect(_note_pending, weak=False, dispatch_uid="demo-pending")
metrics = TalliedClient(books)  # where to send: CONVEYOR_URL, set by the demo
errors = ErrorReporter(books)
signals.worker_process_shutdown.connect(_close_books, weak=False, dispatch_uid="demo-books")


class MailboxFullError(Exception):
    """What ``send_receipt`` raises for every tenth order."""


def send_receipt(order: int, items: int) -> str:
    started = time.perf_counter()
    try:
        if order % 10 == 7:
            raise MailboxFullError(f"mailbox of the customer of order {order} is full")
        metrics.increment("jobs.receipts")
        metrics.count("jobs.receipt.lines", items)
        return "sent"
    except MailboxFullError as error:
        errors.report(error, order=order)
        metrics.increment("jobs.errors", tags=["error:mailbox_full"])
        metrics.event("receipt failed", str(error), alert_type="warning")
        raise
    finally:
        metrics.histogram(
            "jobs.duration", (time.perf_counter() - started) * 1000, tags=["task:send_receipt"]
        )


def reindex(documents: int) -> int:
    started = time.perf_counter()
    metrics.count("jobs.reindexed", documents)
    metrics.histogram(
        "jobs.duration", (time.perf_counter() - started) * 1000, tags=["task:reindex"]
    )
    return documents


app.task(name=SEND_RECEIPT)(send_receipt)
app.task(name=REINDEX)(reindex)
