"""``conveyor agent``: run the DogStatsD agent until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_PROMETHEUS = "127.0.0.1:9102"

# Configuration keys, as in a --config TOML file; each maps to a flag of the same name.
_KEYS = (
    "listen",
    "flush_interval",
    "prometheus",
    "forward",
    "stdout",
    "jsonl",
    "model",
    "idle_timeout",
    "max_connections",
    "max_contexts",
    "percentiles",
    "statsd_dialect",
    "workers",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from conveyor.agent import DEFAULT_FLUSH_INTERVAL, DEFAULT_MODEL, DEFAULT_URL, MODELS

    parser.add_argument(
        "--listen",
        action="append",
        metavar="URL",
        help=(
            f"where to receive DogStatsD (repeatable): udp://host:port, udp://[::1]:port, "
            f"unixgram:///path, unixstream:///path, tcp://host:port (default {DEFAULT_URL})"
        ),
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        metavar="S",
        help=f"seconds per aggregation interval (default {DEFAULT_FLUSH_INTERVAL:g})",
    )
    parser.add_argument(
        "--prometheus",
        metavar="HOST:PORT",
        help=f"serve /metrics for Prometheus here (default {DEFAULT_PROMETHEUS} "
        "when no output is given; 'off' to disable)",
    )
    parser.add_argument(
        "--forward",
        action="append",
        metavar="URL",
        help="send aggregates upstream (repeatable): a StatsD/DogStatsD URL "
        "(udp://, tcp://, unix...) or an http(s):// endpoint taking JSON",
    )
    parser.add_argument(
        "--stdout",
        action="store_true",
        default=None,
        help="print each flush (default when no output is given)",
    )
    parser.add_argument("--jsonl", metavar="PATH", help="append each flush to a JSON-lines file")
    parser.add_argument(
        "--model",
        choices=MODELS,
        help=f"connection threading model for stream listeners (default {DEFAULT_MODEL}; "
        "see docs/agent.md)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="close idle connections after S seconds (30)",
    )
    parser.add_argument(
        "--max-connections", type=int, metavar="N", help="refuse connections past N (1024)"
    )
    parser.add_argument(
        "--max-contexts",
        type=int,
        metavar="N",
        help="contexts per interval; more are dropped (100000)",
    )
    parser.add_argument(
        "--percentiles",
        type=_percents,
        metavar="P,P,...",
        help="percentiles reported for histograms and timings, in percent (default 50,95,99)",
    )
    parser.add_argument(
        "--statsd-dialect",
        action="store_true",
        default=None,
        help="read plain StatsD (gauge deltas +N/-N)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="ingest processes sharing the UDP port with SO_REUSEPORT, merged at each "
        "flush (default 1; udp:// listeners only when N > 1)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE.toml", help="read these settings from a TOML file"
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Flags win over the config file, which wins over the defaults."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        if sys.version_info < (3, 11):
            raise SystemExit("conveyor agent: --config needs Python 3.11+ (tomllib)")
        tomllib = importlib.import_module("tomllib")  # 3.11+; mypy targets 3.10
        with args.config.open("rb") as file:
            loaded: dict[str, Any] = tomllib.load(file)
        unknown = sorted(set(loaded) - set(_KEYS))
        if unknown:
            raise SystemExit(f"conveyor agent: unknown keys in {args.config}: {', '.join(unknown)}")
        settings.update(loaded)
    for key in _KEYS:
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    return settings


def _percents(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"50,95,99.9"`` (or a TOML list of numbers) -> ``(50.0, 95.0, 99.9)``, checked."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        percents = [float(item) for item in items]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"percentiles must be numbers between 0 and 100, like 50,95,99; got {text!r}"
        ) from None
    if not percents or not all(0 < p < 100 for p in percents):
        raise argparse.ArgumentTypeError(
            f"percentiles must be between 0 and 100 (exclusive), like 50,95,99; got {text!r}"
        )
    return tuple(sorted(set(percents)))


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"conveyor agent: {what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def build_server(settings: dict[str, Any]) -> Any:
    from conveyor.agent import (
        DEFAULT_URL,
        AgentServer,
        AgentWorkers,
        Backend,
        HttpJsonForwarder,
        JsonLinesBackend,
        PrometheusBackend,
        StatsdForwarder,
        StdoutBackend,
    )

    backends: list[Backend] = []
    outputs_given = any(settings.get(key) for key in ("prometheus", "forward", "stdout", "jsonl"))
    if settings.get("stdout") or not outputs_given:
        backends.append(StdoutBackend())
    if settings.get("jsonl"):
        backends.append(JsonLinesBackend(settings["jsonl"]))
    prometheus = settings.get("prometheus") or (None if outputs_given else DEFAULT_PROMETHEUS)
    if prometheus and prometheus != "off":
        host, port = _host_port(prometheus, "--prometheus")
        backends.append(PrometheusBackend(host, port))
    for url in settings.get("forward") or ():
        if url.startswith(("http://", "https://")):
            backends.append(HttpJsonForwarder(url))
        else:
            backends.append(StatsdForwarder(url))
    stream_options: dict[str, Any] = {
        key: settings[key]
        for key in ("model", "idle_timeout", "max_connections")
        if key in settings
    }
    options: dict[str, Any] = {
        "flush_interval": settings.get("flush_interval", 10.0),
        "max_contexts": settings.get("max_contexts", 100_000),
        "statsd_dialect": bool(settings.get("statsd_dialect", False)),
        "stream_options": stream_options,
    }
    if "percentiles" in settings:
        try:  # a TOML list arrives unchecked
            percents = _percents(settings["percentiles"])
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"--percentiles: {error}") from None
        options["percentiles"] = tuple(p / 100 for p in percents)
    workers = settings.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
    listen = settings.get("listen") or [DEFAULT_URL]
    if workers > 1:
        return AgentWorkers(listen, backends, workers=workers, **options)
    return AgentServer(listen, backends, **options)


def run_agent(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT or SIGTERM, then stop cleanly with a final flush."""
    try:
        server = build_server(_settings(args))
        server.start()
    except (OSError, ValueError, TypeError) as error:
        print(f"conveyor agent: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    urls = server.urls if hasattr(server, "urls") else [lis.url for lis in server.listeners]
    addresses = ", ".join(urls)
    print(f"conveyor agent: listening on {addresses}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    print("conveyor agent: stopping (final flush)", file=sys.stderr, flush=True)
    server.close()
    return 0
