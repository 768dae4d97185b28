"""A Celery app whose task is shaped like the seed story's ``health_check``: it records
one increment of ``srv.health_check`` and returns ``'ok'``.

The broker is kombu's filesystem transport and the result backend Celery's ``file://``
backend, both in ``SRV_CELERY_DIR``: no server to run. The client is created here, at
import: in the worker's main process, before the prefork pool forks its children.
"""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]
from srv_celery_config import TASK, configure
from srv_client import make_client

METRIC = "srv.health_check"


app = Celery("srv_celery")
if "SRV_CELERY_DIR" in os.environ:
    configure(app, os.environ["SRV_CELERY_DIR"])

client = make_client()


def health_check() -> str:
    client.increment(METRIC)
    return "ok"


app.task(name=TASK)(health_check)
