"""Celery settings shared by the worker (``srv_celery``) and the harness's producer,
which must not import ``srv_celery`` (that would create a client in the test process).

kombu's ``filesystem://`` transport writes a message file in place while its consumer
takes files by renaming them, which ignores the writer's lock: a worker can take a
message before it is written, fail to decode it, and lose that task (the demo saw it
within seconds under load; here it would look like a pool whose results never come).
So the producer writes to an outbox and :func:`deliver_outbox` moves each finished
message into the queue with one atomic rename."""

from __future__ import annotations

import os
from typing import Any

TASK = "srv_celery.health_check"


def configure(app: Any, directory: str, *, producer: bool = False) -> None:
    """The settings the worker and the harness's producer share; a producer writes its
    messages to the outbox (see the module docstring)."""
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
            "store_processed": True,  # keep even the spent messages in the temp dir
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
