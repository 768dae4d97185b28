"""What reaches the receiver when real prefork servers and scripts end, per client.

Runs the scenarios of ``tests/lifecycle/server_harness.py`` (the harness the tests use)
with conveyor and with the ``datadog`` package's clients, and prints a Markdown table of
increments delivered out of increments recorded:

* ``gunicorn``: 4 sync workers, ``preload_app = True``, 400 requests, SIGTERM to the master;
* ``celery``: prefork pool of 4, 200 ``health_check`` tasks, SIGTERM (warm shutdown);
* ``celery-recycling``: the same with ``--max-tasks-per-child=10``;
* ``script``: 100,000 increments, then the script falls off the end of ``main``
  (client created at import);
* ``script-main``: the same with the client a local variable of ``main``.

Clients: ``conveyor`` (defaults), ``dogstatsd`` (``datadog.DogStatsd`` defaults: one
datagram per call on the caller's thread), ``dogstatsd-bg-agg`` (background sender and
aggregation on), ``threadstats`` (``datadog.ThreadStats``, started at import, posting to
an HTTP intake the harness runs on the loopback). Everything runs on 127.0.0.1.

Usage (from the repository root)::

    .venv/bin/python bench/lifecycle/compare.py                 # print the table
    .venv/bin/python bench/lifecycle/compare.py --update-doc    # and rewrite it in
                                                                # docs/lifecycle.md

Each cell runs ``--repeat`` times (3 by default), the rounds interleaved; a cell whose
runs differ shows ``min-max`` and every value. About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "lifecycle"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server_harness import (
    CLIENTS,
    Outcome,
    ScenarioError,
    run_celery,
    run_gunicorn,
    run_script,
)

from _charts import (
    Bar,
    Figure,
    Panel,
    Role,
    add_publish_option,
    publish,
)
from _stats import environment

ROOT = Path(__file__).resolve().parents[2]

SCENARIOS: dict[str, tuple[str, Callable[[str], Outcome]]] = {
    "gunicorn": (
        "gunicorn, 4 sync workers, preload, 400 requests, SIGTERM",
        lambda client: run_gunicorn(client, requests=400, workers=4),
    ),
    "celery": (
        "Celery prefork (4), 200 tasks, SIGTERM (warm shutdown)",
        lambda client: run_celery(client, tasks=200, processes=4),
    ),
    "celery-recycling": (
        "the same, `--max-tasks-per-child=10`",
        lambda client: run_celery(client, tasks=200, processes=4, max_tasks_per_child=10),
    ),
    "script": (
        "script, 100,000 increments, falls off `main` (client global)",
        lambda client: run_script(client, increments=100_000, scope="module"),
    ),
    "script-main": (
        "the same, client a local of `main`",
        lambda client: run_script(client, increments=100_000, scope="main"),
    ),
}

DOC = ROOT / "docs" / "lifecycle.md"
CHART = "lifecycle"  # docs/benchmarks/lifecycle.png and data/lifecycle.json (bench/_charts.py)
BEGIN = "<!-- lifecycle-comparison:begin (bench/lifecycle/compare.py --update-doc) -->"
END = "<!-- lifecycle-comparison:end -->"


def _cell(runs: list[Outcome | str]) -> str:
    outcomes = [run for run in runs if isinstance(run, Outcome)]
    failures = [run for run in runs if isinstance(run, str)]
    text = ""
    if outcomes:
        expected = outcomes[0].expected
        delivered = sorted(o.delivered for o in outcomes)
        if delivered[0] == delivered[-1]:
            text = f"{_fmt(delivered[0])} / {_fmt(expected)}"
        else:
            values = ", ".join(_fmt(d) for d in delivered)
            text = f"{_fmt(delivered[0])}-{_fmt(delivered[-1])} / {_fmt(expected)} ({values})"
        if any(o.receiver_overflows or o.bad_lines for o in outcomes):
            text += " (receiver dropped or misread some)"
    if failures:
        text += f"{'; ' if text else ''}{len(failures)} run(s) failed: {failures[0]}"
    return text


def _fmt(n: int) -> str:
    return f"{n:,}"


def _versions() -> str:
    names = ("conveyor", "datadog", "gunicorn", "celery", "billiard", "kombu")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


Results = dict[tuple[str, str], list[Outcome | str]]


def run(scenarios: list[str], clients: list[str], repeat: int) -> tuple[str, Results]:
    results: Results = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    for round_ in range(repeat):
        for scenario in scenarios:
            for client in clients:
                started = time.monotonic()
                try:
                    outcome: Outcome | str = SCENARIOS[scenario][1](client)
                except ScenarioError as error:
                    outcome = str(error).splitlines()[0]
                seconds[scenario].append(time.monotonic() - started)
                results[(scenario, client)].append(outcome)
                shown = (
                    f"{outcome.delivered}/{outcome.expected}"
                    if isinstance(outcome, Outcome)
                    else outcome
                )
                print(
                    f"# round {round_ + 1}/{repeat} {scenario:17} {client:17} {shown}",
                    file=sys.stderr,
                    flush=True,
                )
    headers = ["scenario", *clients]
    rule = ["---", *(["---:"] * len(clients))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    for scenario in scenarios:
        row = [SCENARIOS[scenario][0]]
        row += [_cell(results[(scenario, client)]) for client in clients]
        lines.append("| " + " | ".join(row) + " |")
    per_run = ", ".join(
        f"{scenario} {statistics.median(seconds[scenario]):.1f} s" for scenario in scenarios
    )
    machine = environment().replace("# ", "").replace("\n", "; ")
    footer = (
        f"\nIncrements delivered / recorded, {repeat} run(s) per cell. Median wall time per "
        f"run: {per_run}.\n{_versions()}; {platform.system()} {platform.release()}; "
        f"{machine}."
    )
    return "\n".join(lines) + "\n" + footer, results


def chart(results: Results, scenarios: list[str], clients: list[str]) -> Figure:
    """Share of the increments delivered, per scenario and client (failed runs left out
    and counted in a note)."""
    panels = []
    for scenario in scenarios:
        bars = []
        for client in clients:
            runs = results[(scenario, client)]
            shares = [100 * o.delivered / o.expected for o in runs if isinstance(o, Outcome)]
            failed = sum(isinstance(o, str) for o in runs)
            note = f"({failed} run(s) failed)" if failed else ""
            role: Role = "conveyor" if client == "conveyor" else "peer"
            bars.append(Bar(client, shares, role, note))
        panels.append(
            Panel(
                SCENARIOS[scenario][0],
                "% of increments delivered",
                bars,
                "higher",
                log=False,
                top=100,
            )
        )
    return Figure(
        CHART,
        "What reaches the receiver when prefork servers and scripts end",
        panels,
        columns=3,
        share_x=True,
    )


def update_doc(table: str, path: Path) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {BEGIN!r} ... {END!r} block to replace")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument(
        "--update-doc",
        nargs="?",
        const=str(DOC),
        metavar="PATH",
        help=f"rewrite the table between the markers in PATH (default {DOC.relative_to(ROOT)})",
    )
    add_publish_option(parser, "yes with --update-doc, otherwise no")
    args = parser.parse_args()
    # Published with the document's table by default: a partial run must not replace the
    # chart of a full one unasked.
    publishing = args.publish if args.publish is not None else bool(args.update_doc)
    load_start = os.getloadavg()[0]
    os.chdir(ROOT)
    table, results = run(args.scenarios, args.clients, args.repeat)
    if publishing:
        # the path is relative to docs/lifecycle.md, where update_doc puts the table
        table = f"![lifecycle comparison](benchmarks/{CHART}.png)\n\n{table}"
    print(table)
    if publishing:
        publish(
            CHART,
            "bench/lifecycle/compare.py",
            sys.argv[1:],
            load_start,
            [chart(results, args.scenarios, args.clients)],
            table,
            doc=None,  # the table lives in docs/lifecycle.md (update_doc)
        )
    if args.update_doc:
        update_doc(table, Path(args.update_doc))


if __name__ == "__main__":
    main()
