"""The ``conveyor`` command line. The only part of conveyor that imports every layer."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from conveyor import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Move metrics, events and errors out of Python applications.",
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a shop, its jobs and the agent, and prove that nothing recorded is lost",
        description=(
            "Start `conveyor agent`, a WSGI shop under gunicorn (prefork workers) and its "
            "Celery jobs (prefork pool), drive them with a load generator, recycle a worker "
            "mid-run, then compare, metric by metric, what every process recorded with what "
            "the agent received. Exits 0 if nothing was lost, 1 if anything was, 2 for a "
            "set-up problem, 3 if a server did not start or stalled. Needs the demo extra: "
            "pip install 'conveyor[demo]'."
        ),
    )
    from conveyor._cli._demo import add_arguments as add_demo_arguments

    add_demo_arguments(demo)
    agent = commands.add_parser(
        "agent",
        help="receive DogStatsD, aggregate, export (stdout, Prometheus, JSON lines, upstream)",
        description=(
            "Receive DogStatsD from application processes, aggregate per flush interval and "
            "export. With no options: UDP on 127.0.0.1:8125, readable output on stdout and "
            "Prometheus /metrics on 127.0.0.1:9102. SIGINT or SIGTERM stops it after a final "
            "flush."
        ),
    )
    from conveyor._cli._agent import add_arguments

    add_arguments(agent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        from conveyor._cli._demo import run_demo

        return run_demo(args)
    if args.command == "agent":
        from conveyor._cli._agent import run_agent

        return run_agent(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse enforces choices
