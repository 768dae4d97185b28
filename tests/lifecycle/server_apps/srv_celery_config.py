"""Celery settings shared by the worker (``srv_celery``) and the harness's producer,
which must not import ``srv_celery`` (that would create a client in the test process)."""

from __future__ import annotations

import os
from typing import Any

TASK = "srv_celery.health_check"


def configure(app: Any, directory: str) -> None:
    """The settings the worker and the harness's producer share."""
    folders = {name: os.path.join(directory, name) for name in ("queue", "processed", "control")}
    for folder in (*folders.values(), os.path.join(directory, "results")):
        os.makedirs(folder, exist_ok=True)
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": folders["queue"],
            "data_folder_out": folders["queue"],
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
