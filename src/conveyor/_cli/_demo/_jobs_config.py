"""Celery settings shared by the demo's job worker (``_jobs``) and the orchestrator's
producer, which must not import ``_jobs`` (that would make a client and books in the
orchestrator).

kombu's ``filesystem://`` broker and Celery's ``file://`` result backend, both in the
run directory: no broker or database server to install or start.

kombu writes a message file in place (open, lock, write) while its consumer takes files
by renaming them, which ignores the lock: a consumer can take a file before it is
written, fail to decode it, and stop the worker (seen here within seconds under the
demo's load). So the producer writes to an outbox and :func:`deliver_outbox` moves
each finished message into the queue with one atomic rename.
"""

from __future__ import annotations

import os
from typing import Any

JOBS_DIR_VARIABLE = "CONVEYOR_DEMO_JOBS_DIR"
SEND_RECEIPT = "conveyor_demo.send_receipt"
REINDEX = "conveyor_demo.reindex"


def configure(app: Any, directory: str, *, producer: bool = False) -> None:
    """Point ``app`` at the broker and result folders under ``directory``; a producer
    writes its messages to the outbox (see the module docstring)."""
    names = ("queue", "outbox", "processed", "control")
    folders = {name: os.path.join(directory, name) for name in names}
    for folder in (*folders.values(), os.path.join(directory, "results")):
        os.makedirs(folder, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["outbox" if producer else "queue"],
            "processed_folder": folders["processed"],
            "store_processed": False,
            "control_folder": folders["control"],
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        result_backend=f"file://{os.path.join(directory, 'results')}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )


def deliver_outbox(directory: str) -> int:
    """Move every message the producer has finished writing into the queue; returns how
    many. Call it after ``send_task`` returned, from the producing thread."""
    outbox = os.path.join(directory, "outbox")
    moved = 0
    for name in sorted(os.listdir(outbox)):
        os.rename(os.path.join(outbox, name), os.path.join(directory, "queue", name))
        moved += 1
    return moved
