"""Real prefork servers: every increment recorded in a worker reaches the receiver.

gunicorn (four sync workers, ``preload_app = True``) and a Celery worker (the prefork
pool, four processes, with and without ``--max-tasks-per-child``) run as subprocesses
with ``conveyor.Client`` created at import, before the fork; the test drives them over
the loopback, stops them with SIGTERM as a supervisor would, waits for them to exit
and counts at a UDP receiver. See ``server_harness.py`` for how, and
``docs/lifecycle.md`` for what the same harness shows for ``datadog``'s clients.

Each server scenario runs twice: with the client's default ``flush_interval`` (what
users get) and with a 60 s one, so that only the fork and exit paths can deliver
(nothing is flushed by the timer during a run this short). Two plain scripts (100,000
increments, then falling off the end of ``main``) complete the picture.

gunicorn and Celery come with the ``dev`` extra. Without them these tests skip, except
under ``CI=true``, where that fails.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import pytest
from server_harness import Outcome, ScenarioError, run_celery, run_gunicorn, run_script

from ci_support import missing

EXIT_PATHS_ONLY = {"SRV_FLUSH_INTERVAL": "60"}

INTERVALS = [
    pytest.param(None, id="default-interval"),
    pytest.param(EXIT_PATHS_ONLY, id="exit-paths-only"),
]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        missing(module, "not installed (the dev extra has it: make venv)")


def _check_delivered(outcome: Outcome) -> None:
    assert outcome.receiver_overflows == 0, "the receiver dropped datagrams: a harness fault"
    assert outcome.bad_lines == 0
    if "main_process_hung" in outcome.details:
        # Celery's own rare warm-shutdown hang (also with datadog's clients): its pool
        # children had all exited, which is what the count depends on.
        warnings.warn(
            "the Celery main process did not finish its warm shutdown after its pool "
            f"children exited:\n{outcome.details['main_process_hung']}",
            stacklevel=2,
        )
    else:
        assert outcome.exit_code == 0, outcome.log_tail
    assert outcome.delivered == outcome.expected, (
        f"{outcome.scenario}: {outcome.delivered} of {outcome.expected} increments arrived"
        f" ({outcome.workers} worker processes)\n{outcome.log_tail}"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings", INTERVALS)
def test_gunicorn_preloaded_sync_workers_deliver_every_request_after_sigterm(
    settings: dict[str, str] | None,
) -> None:
    _require("gunicorn")
    outcome = run_gunicorn("conveyor", requests=400, workers=4, settings=settings)
    _check_delivered(outcome)
    assert outcome.workers >= 2, outcome.details  # the requests were spread over workers


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(None, id="default-interval"),
        pytest.param(EXIT_PATHS_ONLY, id="exit-paths-only"),
    ],
)
def test_celery_prefork_delivers_every_task_after_a_warm_shutdown(
    settings: dict[str, str] | None,
) -> None:
    _require("celery")
    outcome = run_celery("conveyor", tasks=200, processes=4, settings=settings)
    _check_delivered(outcome)


def _run_celery_retrying_a_stalled_pool(**options: Any) -> Outcome:
    """Seen about once in a hundred runs, with conveyor and with datadog.DogStatsd alike:
    the tasks' results never came (the main process waiting in Pool.apply_async). One
    cause was later found and removed: kombu's filesystem broker let the worker take a
    message file before the producer had written it, losing that task (the producer now
    writes to an outbox; see srv_celery_config). Whether it was the only cause is not
    known, so a run whose results never come is still retried once, with a warning: a
    scenario that could not run, not a wrong count. A wrong count is never retried."""
    try:
        return run_celery("conveyor", timeout=45.0, **options)
    except ScenarioError as error:
        if "waiting for the tasks' results" not in str(error):
            raise
        warnings.warn(f"Celery's pool stalled; running the scenario again: {error}", stacklevel=2)
        return run_celery("conveyor", timeout=45.0, **options)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("settings", INTERVALS)
def test_celery_prefork_children_recycled_every_ten_tasks_deliver_every_task(
    settings: dict[str, str] | None,
) -> None:
    _require("celery")
    outcome = _run_celery_retrying_a_stalled_pool(
        tasks=200, processes=4, max_tasks_per_child=10, settings=settings
    )
    _check_delivered(outcome)
    assert outcome.workers > 4  # children were replaced


@pytest.mark.timeout(60)
def test_a_script_that_falls_off_the_end_of_main_delivers_every_increment() -> None:
    _check_delivered(run_script("conveyor", increments=100_000, scope="module"))


@pytest.mark.timeout(60)
def test_a_script_whose_client_is_a_local_of_main_delivers_every_increment() -> None:
    _check_delivered(run_script("conveyor", increments=100_000, scope="main"))
