"""The ``conveyor`` command line. The only part of conveyor that imports every layer."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from conveyor import __version__


def _power_of_two(text: str) -> int:
    value = int(text)
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two (e.g. 512, 1024)")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conveyor",
        description="Move metrics, events and errors out of Python applications.",
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a small ring pipeline and prove that nothing is lost",
        description=(
            "Publish events through a conveyor.ring pipeline: a FanOut of subscribers "
            "(one joins and leaves mid-stream), then a self-balancing worker pool. Shows "
            "live progress and exits non-zero if any item was lost or duplicated."
        ),
    )
    demo.add_argument("--events", type=int, default=300_000, help="events per pipeline")
    demo.add_argument(
        "--capacity", type=_power_of_two, default=1024, help="ring capacity (power of 2)"
    )
    demo.add_argument("--workers", type=int, default=3, help="threads in the worker pool")
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

        return run_demo(events=args.events, capacity=args.capacity, workers=args.workers)
    if args.command == "agent":
        from conveyor._cli._agent import run_agent

        return run_agent(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse enforces choices
