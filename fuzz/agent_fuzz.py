"""Coverage-guided fuzzing (atheris, libFuzzer) of everything the agent does with bytes
from the network.

Usage::

    .venv/bin/python fuzz/agent_fuzz.py [--seconds S] [--workdir DIR] [LIBFUZZER_FLAG...]
    .venv/bin/python fuzz/agent_fuzz.py --workdir DIR DIR/artifacts/crash-...  # replay

``make fuzz`` runs it for a few minutes; ``tests/agent/test_agent_fuzz.py`` for about
20 seconds. The seed corpus (valid lines of every kind, as datagrams and as framed
streams) and a libFuzzer dictionary of the format's tokens are written to
``DIR/corpus`` and ``DIR/agent.dict`` (``DIR`` defaults to ``build/fuzz``); the corpus
grows there between runs. A crash is written to ``DIR/artifacts/`` and the run exits
non-zero; rerun the file to replay it.

Each input is both a datagram and a stream. Byte 0 picks how the stream is cut into
reads (the rest is the payload); every input goes through:

* :func:`conveyor.protocol.parse_packet`, DogStatsD and StatsD dialects: it must not
  raise, and must account for every line: one metric, event, service check or counted
  error per non-empty line, errors only under :data:`BAD_LINE_REASONS`; every metric
  well-formed (a name, a known type, finite values, a rate in (0, 1], a set member);
* :func:`conveyor.protocol.parse_line` on the first line: an item, or
  :class:`ProtocolError` with a known reason, nothing else;
* :meth:`Aggregator.ingest`, flush and :meth:`Snapshot.merge` (as ``--workers``
  merges), twice: the input alone (flushed, merged with itself, rendered at once) and
  into long-lived aggregators (state across inputs; flushed, merged and rendered every
  256 inputs); the line count must grow by exactly what the parser found. Rendered by
  every backend: stdout, JSON lines, the Prometheus exposition, and the forwarder's
  DogStatsD lines, which must parse back without a bad line;
* the stream framers (:class:`LengthFramer` for ``unixstream``, :class:`LineFramer`
  for ``tcp``): only :class:`FramingError`, never a frame over the limit, a bounded
  buffer, and the same frames whether the stream arrives whole or in the reads byte 0
  picks (what a TCP peer may do to any stream).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import random
import struct
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = ROOT / "build" / "fuzz"
MAX_FRAME = 256  # small, so that inputs of a few hundred bytes reach the framers' limits
FLUSH_EVERY = 256
MAX_LEN = 8192

try:
    atheris: Any = importlib.import_module("atheris")
except ImportError:  # pragma: no cover - reported by main()
    atheris = None


def _instrument() -> None:
    """Import conveyor's modules under atheris' coverage instrumentation (only those:
    the fuzzer is guided by conveyor's branches, not the standard library's)."""
    if atheris is None:
        raise SystemExit(
            "fuzz/agent_fuzz.py needs atheris: .venv/bin/pip install atheris"
            " (in the dev extra on Linux)"
        )
    with atheris.instrument_imports(include=["conveyor"]):
        import conveyor.agent._aggregate
        import conveyor.agent._backends
        import conveyor.agent._listen_framing
        import conveyor.agent._series
        import conveyor.protocol._parse  # noqa: F401


if __name__ == "__main__":
    _instrument()

from prometheus_client import generate_latest  # noqa: E402

from conveyor.agent._aggregate import (  # noqa: E402  (after instrumentation)
    TELEMETRY_PREFIX,
    Aggregator,
)
from conveyor.agent._backends import (  # noqa: E402
    JsonLinesBackend,
    PrometheusBackend,
    StatsdForwarder,
    StdoutBackend,
)
from conveyor.agent._listen_framing import (  # noqa: E402
    Framer,
    FramingError,
    LengthFramer,
    LineFramer,
)
from conveyor.agent._series import Snapshot  # noqa: E402
from conveyor.protocol import (  # noqa: E402
    BAD_LINE_REASONS,
    Event,
    Metric,
    ParseResult,
    ProtocolError,
    ServiceCheck,
    parse_line,
    parse_packet,
)

_TYPES = frozenset(("c", "g", "ms", "h", "d", "s"))
_LENGTH = struct.Struct("<I")


# --- the checks -----------------------------------------------------------------------


def _lines_in(payload: bytes) -> int:
    """Non-empty lines, as the parser splits them (``\\n``, an optional ``\\r`` before)."""
    return sum(1 for line in payload.split(b"\n") if line.removesuffix(b"\r"))


def _check_metric(metric: Metric, dialect: bool) -> None:
    assert isinstance(metric.name, str) and metric.name, metric
    assert metric.type in _TYPES, metric
    assert 0.0 < metric.sample_rate <= 1.0, metric
    assert all(isinstance(tag, str) and tag for tag in metric.tags), metric
    if metric.type == "s":
        assert isinstance(metric.set_value, str) and metric.set_value, metric
        assert metric.values == (), metric
    else:
        assert metric.values, metric
        assert all(math.isfinite(value) for value in metric.values), metric
    assert not metric.delta or (dialect and metric.type == "g"), metric
    assert metric.timestamp is None or 0 < metric.timestamp < 2**63, metric


def check_parse(payload: bytes, dialect: bool) -> ParseResult:
    result = parse_packet(payload, statsd_dialect=dialect)
    for metric in result.metrics:
        _check_metric(metric, dialect)
    assert all(isinstance(event, Event) and event.title for event in result.events)
    assert all(isinstance(check, ServiceCheck) and check.name for check in result.service_checks)
    assert set(result.errors) <= set(BAD_LINE_REASONS), result.errors
    assert all(count > 0 for count in result.errors.values()), result.errors
    found = _found(result)
    lines = _lines_in(payload)
    assert found == lines, f"{lines} non-empty lines but {found} items and errors: {result}"
    return result


def check_parse_line(payload: bytes, dialect: bool) -> None:
    line = payload.split(b"\n", 1)[0]
    try:
        item = parse_line(line, statsd_dialect=dialect)
    except ProtocolError as error:
        assert error.reason in BAD_LINE_REASONS or error.reason == "empty", error.reason
        return
    assert isinstance(item, (Metric, Event, ServiceCheck)), item


def _frames(framer: Framer, reads: list[bytes]) -> tuple[list[bytes], str | None]:
    """What a connection delivers: the frames, and the framing error that ended it."""
    delivered: list[bytes] = []
    for data in reads:
        try:
            delivered.extend(framer.feed(data))
        except FramingError as error:
            assert error.reason in ("frame_too_large", "line_too_long"), error.reason
            delivered.extend(error.packets)
            return delivered, error.reason
        bound = MAX_FRAME + 4 if isinstance(framer, LengthFramer) else MAX_FRAME
        assert framer.buffered <= bound, (framer.buffered, bound)
    return delivered, None


def _reads(payload: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    reads: list[bytes] = []
    position = 0
    while position < len(payload):
        size = rng.choice((1, 2, 3, 5, 8, 64, 300, 4096))
        reads.append(payload[position : position + size])
        position += size
    return reads


def check_framers(payload: bytes, seed: int) -> None:
    reads = _reads(payload, seed)
    whole, whole_error = _frames(LengthFramer(MAX_FRAME), [payload])
    parts, parts_error = _frames(LengthFramer(MAX_FRAME), reads)
    assert (whole, whole_error) == (parts, parts_error), (whole, whole_error, parts, parts_error)
    assert all(0 < len(frame) <= MAX_FRAME for frame in whole), whole

    def lines(packets: list[bytes]) -> list[bytes]:
        return [line for packet in packets for line in packet.split(b"\n") if line]

    whole, whole_error = _frames(LineFramer(MAX_FRAME), [payload])
    parts, parts_error = _frames(LineFramer(MAX_FRAME), reads)
    assert whole_error == parts_error, (whole_error, parts_error)
    assert lines(whole) == lines(parts), (whole, parts)
    assert all(len(line) <= MAX_FRAME for line in lines(whole)), whole
    assert all(packet and packet.strip(b"\n") == packet for packet in whole + parts)


class AggregationCheck:
    """Every input is aggregated twice over: alone (two fresh aggregators, one per
    dialect, flushed, merged and rendered at once, so that the fuzzer sees the
    coverage of flush, merge and the renderers for that very input), and into two
    long-lived aggregators (state across inputs: contexts, dialect gauges, sample
    reservoirs), flushed, merged and rendered every FLUSH_EVERY inputs."""

    def __init__(self) -> None:
        self.aggregators = {dialect: _aggregator(dialect) for dialect in (False, True)}
        self.fresh = {dialect: _aggregator(dialect) for dialect in (False, True)}
        self.inputs = 0
        self.clock = 1_700_000_000.0
        # Loopback only; never scraped: its exposition is rendered in-process.
        self.prometheus = PrometheusBackend("127.0.0.1", 0)
        # Only lines() is called: nothing is sent.
        self.forwarder = StatsdForwarder("udp://127.0.0.1:9")

    def ingest(self, result: ParseResult, dialect: bool) -> None:
        aggregator = self.aggregators[dialect]
        before = aggregator.statistics().lines
        aggregator.ingest(result)
        assert aggregator.statistics().lines == before + _found(result)

    def alone(self, results: dict[bool, ParseResult]) -> None:
        if not any(r.metrics or r.events or r.service_checks for r in results.values()):
            return
        snapshots = []
        for dialect, result in results.items():
            aggregator = self.fresh[dialect]
            aggregator.ingest(result)
            snapshot = aggregator.flush(10.0, self.clock)  # and empty again
            # Without the agent's own telemetry (the long-lived check has it): this
            # input's series only, which keeps the fuzzer fast.
            mine = tuple(x for x in snapshot.series if not x.name.startswith(TELEMETRY_PREFIX))
            snapshots.append(replace(snapshot, series=mine))
        # The same contexts in several parts, as --workers merges them.
        self.render(snapshots[0].merge([*snapshots[1:], snapshots[0]]))

    def step(self) -> None:
        self.inputs += 1
        if self.inputs % FLUSH_EVERY:
            return
        self.clock += 10.0
        snapshots = [agg.flush(10.0, self.clock) for agg in self.aggregators.values()]
        for snapshot in (*snapshots, snapshots[0].merge(snapshots[1:])):
            self.render(snapshot)

    def render(self, snapshot: Snapshot) -> None:
        """What every backend makes of it: no exception, and the forwarder's lines read
        back without a bad line."""
        StdoutBackend(io.StringIO()).emit(snapshot)
        for record in JsonLinesBackend.records(snapshot):
            json.dumps(record, allow_nan=True)
        self.prometheus.emit(snapshot)
        generate_latest(self.prometheus)
        lines = list(self.forwarder.lines(snapshot))
        again = parse_packet(b"\n".join(lines))
        assert not again.errors, (again.errors, lines)


def _aggregator(dialect: bool) -> Aggregator:
    return Aggregator(statsd_dialect=dialect, max_contexts=2000, max_samples=64, max_events=64)


def _found(result: ParseResult) -> int:
    return (
        len(result.metrics)
        + len(result.events)
        + len(result.service_checks)
        + sum(result.errors.values())
    )


# --- the entry point ------------------------------------------------------------------

_aggregation = AggregationCheck()


# The agent logs bad input at a limited rate (tests/agent/test_agent_fuzz.py checks
# that); here it would be a line per input on the fuzzer's console.
logging.getLogger("conveyor").setLevel(logging.CRITICAL)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    seed, payload = data[0], data[1:]
    results = {}
    for dialect in (False, True):
        results[dialect] = result = check_parse(payload, dialect)
        check_parse_line(payload, dialect)
        _aggregation.ingest(result, dialect)
    _aggregation.alone(results)
    _aggregation.step()
    check_framers(payload, seed)


SEED_LINES: tuple[bytes, ...] = (
    b"page.views:1|c",
    b"page.views:2|c|@0.5|#env:prod,region:eu",
    b"queue.depth:12|g|#queue:mail",
    b"queue.depth:+3|g",
    b"queue.depth:-2:+1|g",
    b"users.online:alice|s|#app:web",
    b"request.latency:12.5|ms|@0.25",
    b"request.latency:1:2:3:10|ms",
    b"payload.size:100:200:300|h|#route:/x|T1700000000",
    b"payload.size:1.5e3|d|c:4f2a|card:low|e:it-false",
    b"x:-0.001|c|#a,b,,c",
    b"x:1|c|T1700000000|@1|#t",
    b"vies:1e+308|c",  # found: merged sums overflowed math.fsum (regression seed)
    b"t:1.5e308|ms|@0.5",
    b"_e{5,4}:Title|Text|d:1700000000|h:host|k:key|p:low|s:src|t:warning|#env:prod",
    b"_e{7,12}:Deploy!|line1\\nline2|#a:b",
    b"_sc|db.up|0|d:1700000000|h:host|#env:prod|m:all good",
    b"_sc|db.up|2|m:down m\\: really",
    # and a few bad ones, for the error paths
    b"bad:abc|c",
    b"bad:1|zz",
    b"bad:1|c|@2",
    b"bad:1|c|T-5",
    b":1|c",
    b"no_value|c",
    b"_e{9,1}:short|x",
    b"_sc|x|7",
    b"\xff\xfe:1|c",
)

DICTIONARY = (
    "|c", "|g", "|ms", "|h", "|d", "|s", "|@", "|#", "|T", "|c:", "|e:", "|card:",
    ":", ",", "\\x0a", "\\x0d\\x0a", "_e{", "}:", "_sc|", "|d:", "|h:", "|k:", "|p:", "|s:",
    "|t:", "|m:", "m\\\\:", "e+308", "1e308", "-1e308", "1.7976931348623157e308",
    "1e999", "nan", "inf", "-", "+", "0.", "@0.5", "@0.1",
)  # fmt: skip


def write_seeds(corpus: Path, dictionary: Path) -> None:
    """The seed corpus: each line alone, the lines as one packet, and as streams."""
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = [bytes([i % 256]) + line for i, line in enumerate(SEED_LINES)]
    packet = b"\n".join(SEED_LINES)
    seeds.append(b"\x00" + packet)
    seeds.append(b"\x07" + packet.replace(b"\n", b"\r\n") + b"\r\n")
    framed = b"".join(_LENGTH.pack(len(line)) + line for line in SEED_LINES)
    seeds.append(b"\x03" + framed)
    seeds.append(b"\x05" + _LENGTH.pack(MAX_FRAME + 1) + b"x" * 8)  # too large a frame
    seeds.append(b"\x09" + b"y" * (MAX_FRAME + 1) + b"\n" + SEED_LINES[0])  # too long a line
    for index, seed in enumerate(seeds):
        (corpus / f"seed-{index:03d}").write_bytes(seed)
    entries = [f'"{token}"' for token in DICTIONARY]
    dictionary.write_text("\n".join(entries) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="time budget (default 60)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpus & crashes")
    options, rest = parser.parse_known_args(argv)
    workdir: Path = options.workdir.resolve()
    corpus, artifacts = workdir / "corpus", workdir / "artifacts"
    dictionary = workdir / "agent.dict"
    write_seeds(corpus, dictionary)
    artifacts.mkdir(parents=True, exist_ok=True)
    replay = [arg for arg in rest if not arg.startswith("-")]
    flags = [arg for arg in rest if arg.startswith("-")]
    libfuzzer = [
        sys.argv[0],
        f"-artifact_prefix={artifacts}/",
        f"-dict={dictionary}",
        f"-max_len={MAX_LEN}",
        "-timeout=10",  # seconds per input: a hang is a finding too
        *flags,
    ]
    if replay:  # libFuzzer runs the given inputs once and exits
        libfuzzer += replay
    else:
        libfuzzer += [f"-max_total_time={options.seconds}", str(corpus)]
    print("fuzz/agent_fuzz.py:", " ".join(libfuzzer[1:]), file=sys.stderr, flush=True)
    atheris.Setup(libfuzzer, test_one_input)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits the process


if __name__ == "__main__":
    sys.exit(main())
