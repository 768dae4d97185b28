"""Where snapshots go: stdout, a JSON-lines file, a Prometheus endpoint, an upstream
StatsD, an HTTP endpoint taking JSON.

A backend is anything with ``emit(snapshot)`` and ``close()`` (:class:`Backend`). The
agent calls ``emit`` once per flush interval from its flush thread, one backend after
the other, and ``close`` once at shutdown after the final flush; a backend must not
raise for a problem at its destination (a full disk, a dead upstream): it counts it
and logs it at a limited rate, because one broken backend must not starve the others.

None of them is thread-safe beyond that contract, except :class:`PrometheusBackend`,
whose HTTP server threads read what ``emit`` publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, runtime_checkable

from conveyor._ratelimit import RateLimitedLog
from conveyor.protocol import (
    Event,
    Packer,
    ProtocolError,
    ServiceCheck,
    encode,
    encode_metric,
)
from conveyor.transport import Transport, TransportError, transport_from_url

from ._series import Series, Snapshot
from ._sketch import quantile_value

log = logging.getLogger("conveyor.agent")


@runtime_checkable
class Backend(Protocol):
    """What the agent hands its snapshots to."""

    def emit(self, snapshot: Snapshot) -> None:
        """Export one flush interval's snapshot; never raise for a destination problem."""

    def close(self) -> None:
        """Release files, sockets and threads; called once, after the final emit."""


@dataclass(frozen=True)
class BackendStatistics:
    """A backend's counters: snapshots emitted, series written, failures by reason."""

    emits: int = 0
    series: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _describe(series: Series) -> str:
    """The values of one series as ``key=value`` pairs, for people."""
    if series.kind == "counter":
        return f"count={_number(series.value)} rate={_number(series.rate)}/s"
    if series.kind in ("gauge", "set"):
        label = "value" if series.kind == "gauge" else "distinct"
        return f"{label}={_number(series.value)}"
    return " ".join(f"{key}={_number(value)}" for key, value in series.stats)


_SHORT_KIND = {
    "counter": "count",
    "gauge": "gauge",
    "set": "set",
    "histogram": "hist",
    "timing": "timing",
    "distribution": "dist",
}


class StdoutBackend:
    """Readable text, one block per flush, written and flushed in one go.

    Each block starts with a header line (flush time in UTC, interval, counts) and
    lists the series sorted by name, in aligned columns: kind, name, tags, values;
    then events and service checks, one line each. Meant for people watching a
    terminal, not for parsing (use :class:`JsonLinesBackend` for that).
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._log = RateLimitedLog(log)
        self._emits = 0
        self._written = 0
        self._errors: Counter[str] = Counter()

    def render(self, snapshot: Snapshot) -> str:
        """The block :meth:`emit` writes."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.timestamp))
        lines = [
            f"--- {stamp} interval {_number(snapshot.interval)}s:"
            f" {len(snapshot.series)} series, {len(snapshot.events)} events,"
            f" {len(snapshot.service_checks)} service checks"
            + (f", {snapshot.events_dropped} dropped" if snapshot.events_dropped else "")
        ]
        rows = [
            (_SHORT_KIND[s.kind], s.name, ",".join(s.tags) or "-", _describe(s))
            for s in sorted(snapshot.series, key=lambda s: (s.name, s.kind, s.tags))
        ]
        if rows:
            kind_w = max(len(row[0]) for row in rows)
            name_w = max(len(row[1]) for row in rows)
            tags_w = min(max(len(row[2]) for row in rows), 60)
            lines.extend(
                f"{kind:<{kind_w}}  {name:<{name_w}}  {tags:<{tags_w}}  {values}"
                for kind, name, tags, values in rows
            )
        lines.extend(
            f"event  {event.title!r}: {event.text!r}"
            + (f" [{event.alert_type}]" if event.alert_type else "")
            + (f"  #{','.join(event.tags)}" if event.tags else "")
            for event in snapshot.events
        )
        lines.extend(
            f"check  {check.name} status={int(check.status)}"
            + (f"  {check.message!r}" if check.message else "")
            + (f"  #{','.join(check.tags)}" if check.tags else "")
            for check in snapshot.service_checks
        )
        return "\n".join(lines) + "\n"

    def emit(self, snapshot: Snapshot) -> None:
        text = self.render(snapshot)
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError) as exc:  # closed pipe, closed stream
            self._errors["write"] += 1
            self._log.warning("write", "conveyor agent: stdout backend: %s", exc)
            return
        self._emits += 1
        self._written += len(snapshot.series)

    def close(self) -> None:
        """Flushes the stream; never closes it (it is not ours)."""
        stream = self._stream if self._stream is not None else sys.stdout
        with contextlib.suppress(OSError, ValueError):
            stream.flush()

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(self._emits, self._written, dict(self._errors))


def series_record(series: Series, snapshot: Snapshot) -> dict[str, Any]:
    """One series as the JSON object :class:`JsonLinesBackend` writes."""
    record: dict[str, Any] = {
        "timestamp": snapshot.timestamp,
        "interval": snapshot.interval,
        "name": series.name,
        "kind": series.kind,
        "tags": list(series.tags),
        "value": series.value,
    }
    if series.kind in ("counter", "histogram", "timing", "distribution"):
        record["rate"] = series.rate
    if series.stats:
        record["stats"] = dict(series.stats)
    return record


class JsonLinesBackend:
    """One JSON object per line: per series, event and service check, per flush.

    Series: ``{"timestamp", "interval", "name", "kind", "tags", "value", "rate"?,
    "stats"?}`` (see :func:`series_record`); events ``{"timestamp", "type": "event",
    "title", "text", ...}``, service checks ``{"timestamp", "type": "service_check",
    "name", "status", ...}``. A flush is written with one ``write`` and flushed.

    The file is opened in append mode at each flush and closed after it, so rotation
    is the user's job and is easy: ``logrotate`` (or anything) may move the file away
    and the next flush creates a new one; no ``copytruncate`` needed. The file grows
    without bound otherwise: with 10,000 series and a 10 s flush, about 1 GB a day.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._log = RateLimitedLog(log)
        self._emits = 0
        self._written = 0
        self._errors: Counter[str] = Counter()

    @property
    def path(self) -> str:
        return self._path

    @staticmethod
    def records(snapshot: Snapshot) -> Iterator[dict[str, Any]]:
        """The objects :meth:`emit` writes, one per line."""
        for series in snapshot.series:
            yield series_record(series, snapshot)
        for event in snapshot.events:
            yield {
                "timestamp": snapshot.timestamp,
                "type": "event",
                "title": event.title,
                "text": event.text,
                "event_timestamp": event.timestamp,
                "hostname": event.hostname,
                "aggregation_key": event.aggregation_key,
                "priority": event.priority,
                "source_type_name": event.source_type_name,
                "alert_type": event.alert_type,
                "tags": list(event.tags),
            }
        for check in snapshot.service_checks:
            yield {
                "timestamp": snapshot.timestamp,
                "type": "service_check",
                "name": check.name,
                "status": int(check.status),
                "check_timestamp": check.timestamp,
                "hostname": check.hostname,
                "message": check.message,
                "tags": list(check.tags),
            }

    def emit(self, snapshot: Snapshot) -> None:
        text = "".join(
            json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n"
            for record in self.records(snapshot)
        )
        try:
            with open(self._path, "a", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            self._errors["write"] += 1
            self._log.warning("write", "conveyor agent: cannot write %s: %s", self._path, exc)
            return
        self._emits += 1
        self._written += len(snapshot.series)

    def close(self) -> None:
        """Nothing to do: the file is closed after every flush."""

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(self._emits, self._written, dict(self._errors))


# --- Prometheus ------------------------------------------------------------------------

_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")
_BAD_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED_LABELS = frozenset(("quantile", "le", "tag"))


def prometheus_name(name: str) -> str:
    """A StatsD name under Prometheus' rules: ``[a-zA-Z_:][a-zA-Z0-9_:]*``.

    Every other character (dots, dashes...) becomes ``_``; a leading digit gets a
    ``_`` prefix. ``api.request-time`` -> ``api_request_time``.
    """
    clean = _BAD_NAME_CHARS.sub("_", name)
    if not clean or clean[0].isdigit():
        clean = "_" + clean
    return clean


def prometheus_labels(tags: Iterable[str]) -> dict[str, str]:
    """Tags as Prometheus labels.

    ``key:value`` -> label ``key`` (sanitised like a name, without ``:``; a leading
    digit or ``__`` gets an ``exported_`` prefix, as do ``quantile``, ``le`` and
    ``tag``, which this backend uses itself) = ``value``. Bare tags are kept, sorted
    and comma-joined, in the label ``tag`` (``#canary,blue`` -> ``tag="blue,canary"``).
    Two tags with the same key have their values comma-joined in tag order.
    """
    labels: dict[str, str] = {}
    bare: list[str] = []
    for tag in tags:
        key, separator, value = tag.partition(":")
        if not separator:
            bare.append(tag)
            continue
        label = _BAD_LABEL_CHARS.sub("_", key) or "_"
        if label[0].isdigit() or label.startswith("__") or label in _RESERVED_LABELS:
            label = "exported_" + label
        labels[label] = labels[label] + "," + value if label in labels else value
    if bare:
        labels["tag"] = ",".join(sorted(bare))
    return labels


_PROM_KIND = {
    "counter": "counter",
    "gauge": "gauge",
    "set": "gauge",
    "histogram": "summary",
    "timing": "summary",
    "distribution": "summary",
}


def _label_key(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


_SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


class PrometheusBackend:
    """Serves ``/metrics`` for Prometheus to scrape, rendered by ``prometheus_client``.

    What a scrape sees (names via :func:`prometheus_name`, labels via
    :func:`prometheus_labels`):

    * counters: ``<name>_total`` counters holding the sum of every flush so far (a
      Prometheus counter is cumulative; ``rate()`` does the rest);
    * gauges, and sets (their distinct count), as gauges holding the last value
      received;
    * histograms, timings and distributions as summaries: ``_count`` and ``_sum``
      cumulative like counters, and quantiles ``0`` (min), the configured percentiles
      and ``1`` (max) of the latest flush that had samples.

    Every series stays in the scrape once seen, whether or not the latest flush had it:
    a counter that vanished between two updates would read as a gap (and a reset) in
    Prometheus, and a gauge keeps its last value, as StatsD means it. Memory is bounded
    by ``max_series``: past it, the least recently updated series is forgotten
    (Prometheus reads a forgotten counter that comes back as a reset, which ``rate()``
    handles). A name used for two kinds (after sanitising) keeps the first kind met, and
    two series of one flush with the same name and labels keep the first; both
    conflicts are counted in ``statistics().errors["conflict"]``, since a malformed
    exposition would make Prometheus reject the whole scrape. Binds ``127.0.0.1`` by
    default: exposing the endpoint beyond the machine is a decision (pass
    ``host="0.0.0.0"``). ``port=0`` picks a free port (see :attr:`port`).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 9102, *, max_series: int = 100_000
    ) -> None:
        try:
            from prometheus_client import start_http_server
            from prometheus_client.registry import CollectorRegistry
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(
                "the Prometheus backend needs prometheus-client: pip install 'conveyor[agent]'"
            ) from exc
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        self._lock = threading.Lock()
        self._rendered: list[Any] = []
        self._max_series = max_series
        # Family name -> (Prometheus kind, help text): the first kind met wins.
        self._kinds: dict[str, tuple[str, str]] = {}
        # Every remembered sample, least recently updated first: (family, labels, value).
        self._samples: OrderedDict[_SampleKey, tuple[str, dict[str, str], float]] = OrderedDict()
        # Summary quantiles of the latest flush that had each summary's samples.
        self._quantiles: OrderedDict[_SampleKey, list[tuple[float, float]]] = OrderedDict()
        self._emits = 0
        self._written = 0
        self._errors: Counter[str] = Counter()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._server, self._thread = start_http_server(port, addr=host, registry=self._registry)

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def collect(self) -> Iterable[Any]:
        """Called by prometheus_client on each scrape (from its server threads)."""
        with self._lock:
            return list(self._rendered)

    def _remember(self, family: str, sample: str, labels: dict[str, str], value: float) -> None:
        key = (sample, _label_key(labels))
        self._samples.pop(key, None)
        self._samples[key] = (family, labels, value)

    def _add(self, family: str, sample: str, labels: dict[str, str], amount: float) -> None:
        previous = self._samples.get((sample, _label_key(labels)))
        self._remember(family, sample, labels, (previous[2] if previous else 0.0) + amount)

    def emit(self, snapshot: Snapshot) -> None:
        claimed: set[_SampleKey] = set()
        conflicts = written = 0
        for series in snapshot.series:
            name = prometheus_name(series.name)
            kind = _PROM_KIND[series.kind]
            labels = prometheus_labels(series.tags)
            known = self._kinds.setdefault(
                name, (kind, f"{series.kind} {series.name} (conveyor agent)")
            )
            claim = (name, _label_key(labels))
            if known[0] != kind or claim in claimed:
                conflicts += 1
                continue
            claimed.add(claim)
            written += 1
            if kind == "counter":
                self._add(name, name + "_total", labels, series.value)
            elif kind == "gauge":
                self._remember(name, name, labels, series.value)
            else:
                stats = dict(series.stats)
                quantiles = [(0.0, stats.get("min", math.nan))]
                quantiles.extend(
                    (q, value)
                    for q, (_, value) in zip(snapshot.percentiles, series.stats[5:], strict=False)
                )
                quantiles.append((1.0, stats.get("max", math.nan)))
                self._quantiles.pop(claim, None)
                self._quantiles[claim] = quantiles
                self._add(name, name + "_count", labels, series.value)
                self._add(name, name + "_sum", labels, stats.get("sum", 0.0))
        while len(self._samples) > self._max_series:
            self._samples.popitem(last=False)
        while len(self._quantiles) > self._max_series:
            self._quantiles.popitem(last=False)
        rendered = self._render()
        if conflicts:
            self._errors["conflict"] += conflicts
        with self._lock:
            self._rendered = rendered
        self._emits += 1
        self._written += written

    def _render(self) -> list[Any]:
        from prometheus_client.core import Metric

        families: dict[str, Any] = {}

        def family(name: str) -> Any:
            metric = families.get(name)
            if metric is None:
                kind, help_text = self._kinds[name]
                metric = families[name] = Metric(name, help_text, kind)
            return metric

        for (name, label_key), quantiles in self._quantiles.items():
            count = self._samples.get((name + "_count", label_key))
            if count is None:  # its count was forgotten: so are its quantiles
                continue
            for q, value in quantiles:
                family(name).add_sample(name, {**count[1], "quantile": repr(q)}, value)
        for (sample, _), (name, labels, value) in self._samples.items():
            family(name).add_sample(sample, labels, value)
        # A name whose every series was forgotten may come back as another kind.
        self._kinds = {name: self._kinds[name] for name in families}
        return list(families.values())

    def close(self) -> None:
        """Stops the HTTP server and waits for its thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(self._emits, self._written, dict(self._errors))


# --- Upstream StatsD -------------------------------------------------------------------


class StatsdForwarder:
    """Sends each snapshot upstream as DogStatsD lines: to another agent or StatsD server.

    Aggregated, not relayed: one flush sends one line per series (a few for
    histograms), however many packets came in. Counters go as counts of their sum
    (``name:42|c``); gauges as gauges; sets as a gauge of their distinct count (members
    are not re-sent); histograms and timings as gauges per statistic, ``name.count``,
    ``name.min``, ``name.max``, ``name.avg``, ``name.sum``, ``name.median``,
    ``name.p95``...; distributions as up to ``distribution_values`` values read off
    the sketch at evenly spaced ranks (min to max), packed on lines ``name:v1:v2...|d|@rate``
    whose sample rate makes the upstream count the right number of values. Events and
    service checks are re-encoded as received; the agent's own telemetry is sent like
    any series.

    ``statsd_dialect=True`` is for a plain StatsD upstream, which reads a signed gauge
    as a change: a negative gauge is sent as ``name:0|g`` then ``name:-5|g``.

    Lines are packed into packets of the transport's size with
    :class:`conveyor.protocol.Packer` and written with :mod:`conveyor.transport`
    (``udp://``, ``tcp://``, ``unix://``, ``unixstream://`` URLs). A failed send is
    counted by the transport's reason and logged at a limited rate; a line too long
    for a packet is counted as ``oversized``.
    """

    def __init__(
        self,
        url: str,
        *,
        max_packet_size: int | None = None,
        distribution_values: int = 64,
        statsd_dialect: bool = False,
        transport: Transport | None = None,
    ) -> None:
        self._transport = transport or transport_from_url(url, max_packet_size=max_packet_size)
        self._packer = Packer(self._transport.max_packet_size)
        self._distribution_values = max(1, distribution_values)
        self._dialect = statsd_dialect
        self._log = RateLimitedLog(log)
        self._emits = 0
        self._written = 0
        self._errors: Counter[str] = Counter()

    def lines(self, snapshot: Snapshot) -> Iterator[bytes]:
        """The DogStatsD lines :meth:`emit` sends for ``snapshot``."""
        for series in snapshot.series:
            try:
                yield from self._series_lines(series, snapshot)
            except ProtocolError:  # a name the encoder refuses (from a hand-built series)
                self._errors["unencodable"] += 1
        items: tuple[Event | ServiceCheck, ...] = (*snapshot.events, *snapshot.service_checks)
        for item in items:
            try:
                yield encode(item)
            except ProtocolError:
                self._errors["unencodable"] += 1

    def _series_lines(self, series: Series, snapshot: Snapshot) -> Iterator[bytes]:
        name, tags = series.name, series.tags
        kind = series.kind
        if kind == "counter":
            yield encode_metric(name, "c", series.value, tags=tags)
        elif kind in ("gauge", "set"):
            if self._dialect and series.value < 0:
                yield encode_metric(name, "g", 0, tags=tags)
            yield encode_metric(name, "g", series.value, tags=tags)
        elif kind == "distribution" and series.sketch is not None:
            yield from self._distribution_lines(series)
        else:
            for stat, value in series.stats:
                # One line per statistic: one the format cannot carry (a sum that
                # overflowed to inf) is counted and skipped, the others still go.
                try:
                    line = encode_metric(f"{name}.{stat}", "g", value, tags=tags)
                except ProtocolError:
                    self._errors["unencodable"] += 1
                    continue
                if self._dialect and value < 0:
                    yield encode_metric(f"{name}.{stat}", "g", 0, tags=tags)
                yield line

    def _distribution_lines(self, series: Series) -> Iterator[bytes]:
        sketch = series.sketch
        assert sketch is not None
        count = float(sketch.count)
        if count <= 0:
            return
        k = max(1, min(self._distribution_values, math.floor(count)))
        values: list[float] = []
        for i in range(k):
            # Evenly spaced ranks from the smallest to the largest value: with k equal
            # to the count, each value's own bucket.
            values.append(quantile_value(sketch, i / (k - 1) if k > 1 else 0.5))
        rate = min(1.0, k / count)
        chunk = 16
        start = 0
        while start < len(values):
            line = encode_metric(
                series.name, "d", values[start : start + chunk], sample_rate=rate, tags=series.tags
            )
            if len(line) + 1 > self._packer.max_size and chunk > 1:
                chunk //= 2
                continue
            yield line
            start += chunk

    def _send(self, packet: bytes | None) -> None:
        if packet is None:
            return
        try:
            self._transport.send(packet)
        except TransportError as exc:
            self._errors[exc.reason] += 1
            self._log.warning(
                exc.reason,
                "conveyor agent: cannot forward to %s: %s",
                self._transport.url,
                exc,
            )

    def emit(self, snapshot: Snapshot) -> None:
        packer = self._packer
        written = 0
        for line in self.lines(snapshot):
            try:
                packet = packer.add(line)
            except ProtocolError:  # OversizedLineError
                self._errors["oversized"] += 1
                continue
            written += 1
            self._send(packet)
        self._send(packer.flush())
        self._emits += 1
        self._written += written

    def close(self) -> None:
        self._send(self._packer.flush())
        self._transport.close()

    def statistics(self) -> BackendStatistics:
        """Lines are counted in ``series``; send failures by transport reason."""
        return BackendStatistics(self._emits, self._written, dict(self._errors))


# --- HTTP JSON -------------------------------------------------------------------------


class HttpJsonForwarder:
    """POSTs each snapshot as JSON items with :mod:`conveyor.delivery`'s retry logic.

    Every series becomes the object :func:`series_record` describes, events and service
    checks the objects :class:`JsonLinesBackend` writes; a
    :class:`conveyor.delivery.Dispatcher` over an
    :class:`conveyor.transport.HTTPTransport` batches them (a request body is a JSON
    array of ``{"id": <idempotency key>, "data": <item>}``), retries transient failures
    with back-off within a deadline, trips a circuit breaker on a dead endpoint, and
    counts every item delivered, rejected or dropped (:meth:`statistics`). ``emit``
    never blocks on the network: items the dispatcher's queue cannot take are dropped
    and counted by it. ``close`` waits up to ``close_timeout`` seconds for the last
    flush to be delivered. Needs urllib3 (``conveyor[http]``).

    ``dispatcher_options`` go to the Dispatcher (``max_workers``, ``retry``,
    ``max_queue``...), ``headers`` to the transport (``Authorization``).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        close_timeout: float = 10.0,
        **dispatcher_options: Any,
    ) -> None:
        from conveyor.delivery import Dispatcher
        from conveyor.transport import HTTPTransport

        self._dispatcher = Dispatcher(HTTPTransport(url, headers=headers), **dispatcher_options)
        self._close_timeout = close_timeout
        self._emits = 0
        self._written = 0

    @property
    def dispatcher(self) -> Any:
        """The :class:`conveyor.delivery.Dispatcher` (its ``statistics()``, ``flush()``)."""
        return self._dispatcher

    def emit(self, snapshot: Snapshot) -> None:
        submit = self._dispatcher.submit
        written = 0
        for record in JsonLinesBackend.records(snapshot):
            written += bool(submit(record))
        self._emits += 1
        self._written += written

    def close(self) -> None:
        self._dispatcher.close(timeout=self._close_timeout)

    def statistics(self) -> BackendStatistics:
        """Items accepted by the dispatcher are counted in ``series``; its own books
        (delivered, rejected, dropped) are in ``dispatcher.statistics()``."""
        return BackendStatistics(self._emits, self._written, {})
