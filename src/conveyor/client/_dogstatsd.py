"""`datadog.DogStatsd`'s surface beyond the metric calls, so that moving from it is
one import: timestamped metrics, ``distributed``, the buffer, fork, telemetry and
sender toggles, and the attributes its users read.

Kept apart from :mod:`._client` because none of it is on the hot path: ``Client``
inherits these methods, and its own module stays about recording and sending.
Where DogStatsd's method has no work to do in conveyor (forks are handled by
``conveyor.lifecycle``, lines are always packed), the method exists and says why in its
docstring; docs/guides/from-datadog.md has the whole mapping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from conveyor.protocol import encode_metric

from ._options import TagsArg, check_cardinality, not_negative, queue_policy
from ._timed import Timed
from ._wire import Encoder, WireError, checked_number

if TYPE_CHECKING:
    import threading

    from conveyor.transport import Transport

    from ._client import Client
    from ._options import Overflow
    from ._sender import Item, Sender


class DogStatsdMethods:
    """Mixed into :class:`~conveyor.client.Client`: DogStatsd's other methods and
    attributes."""

    if TYPE_CHECKING:  # what Client provides these methods (see conveyor.client._client)
        _batch: int
        _block_timeout: float
        _closed: bool
        _default_rate: float
        _dogstatsd: DogStatsdState
        _encoder: Encoder
        _gate: memoryview
        _max_queue: int
        _names: set[str]
        _overflow: Overflow
        _pressure_lock: threading.Lock
        _sender: Sender
        _sender_options: dict[str, object]
        _threaded: bool
        _transport: Transport
        _use_ms: bool
        _wake_at: int
        _yield_at: int

        def flush(self, timeout: float | None = 5.0) -> bool: ...
        def _apply_default_rate(self) -> None: ...
        def _check_name(self, metric: str) -> None: ...
        def _checked_tags(self, tags: TagsArg) -> tuple[str, ...] | None: ...
        def _enqueue(self, item: Item) -> None: ...
        def _rate(self, sample_rate: float | None, metric: str) -> float: ...
        def _rendezvous(self, kind: str, timeout: float | None) -> bool: ...

    def gauge_with_timestamp(
        self,
        metric: str,
        value: float,
        timestamp: int,
        tags: TagsArg = None,
        sample_rate: float | None = None,
        cardinality: str | None = None,
    ) -> None:
        """Set the gauge ``metric`` to ``value`` as of ``timestamp`` (unix seconds): sent
        as its own line with DogStatsD's ``|T`` field, never aggregated (agent 7.40+)."""
        self._timestamped("g", metric, value, timestamp, tags, sample_rate, cardinality)

    def count_with_timestamp(
        self,
        metric: str,
        value: float,
        timestamp: int = 0,
        tags: TagsArg = None,
        sample_rate: float | None = None,
        cardinality: str | None = None,
    ) -> None:
        """Add ``value`` to the counter ``metric`` as of ``timestamp`` (unix seconds):
        sent as its own line with DogStatsD's ``|T`` field, never aggregated (a
        timestamp of 0 sends the line without one, as DogStatsd does)."""
        self._timestamped("c", metric, value, timestamp, tags, sample_rate, cardinality)

    def _timestamped(
        self,
        type_: str,
        metric: str,
        value: float,
        timestamp: int,
        tags: TagsArg,
        sample_rate: float | None,
        cardinality: str | None,
    ) -> None:
        """Encoded here, at the call, and queued as a finished line: the aggregator folds
        values per interval and would lose the timestamp."""
        if metric not in self._names:
            self._check_name(metric)
        value = checked_number(value, metric)
        if (
            not isinstance(timestamp, (int, float))
            or isinstance(timestamp, bool)
            or not 0 <= timestamp < math.inf
        ):
            raise ValueError(
                f"{metric!r}: timestamp must be unix seconds (a number >= 0; 0 sends no "
                f"timestamp), not {timestamp!r}"
            )
        state = self._dogstatsd
        origin = state.container_field
        if cardinality is None:
            origin += state.cardinality_field
        else:
            check_cardinality(cardinality)
            origin += f"|card:{cardinality}".encode()
        checked = self._checked_tags(tags)
        rate = self._rate(sample_rate, metric)
        if not rate:
            return
        line = encode_metric(
            state.prefix + metric,
            type_,  # type: ignore[arg-type]
            value,
            sample_rate=rate,
            tags=(*(checked or ()), *self._encoder.constant_tags),
            timestamp=int(timestamp) or None,
        )
        self._enqueue(("_t", line + origin))

    def distributed(
        self,
        metric: str | None = None,
        tags: TagsArg = None,
        sample_rate: float | None = None,
        use_ms: bool | None = None,
    ) -> Timed:
        """As ``timed()``, but each duration is sent as a ``distribution``."""
        if metric is not None and metric not in self._names:
            self._check_name(metric)
        return Timed(
            cast("Client", self),  # the only class this is mixed into
            metric,
            self._checked_tags(tags),
            sample_rate,
            self._use_ms if use_ms is None else use_ms,
            distribution=True,
        )

    def wait_for_pending(self, timeout: float | None = None) -> bool:
        """``flush(timeout)``: True once everything recorded before the call is sent."""
        return self.flush(timeout)

    def flush_aggregated_metrics(self) -> bool:
        """``flush()``: conveyor flushes its aggregates and its packets together."""
        return self.flush()

    def flush_buffered_metrics(self) -> bool:
        """``flush()``: conveyor flushes its aggregates and its packets together."""
        return self.flush()

    def open_buffer(self, max_buffer_size: int | None = None) -> None:
        """Nothing to do: conveyor always packs lines into packets."""

    def close_buffer(self) -> None:
        """``flush()``: what was recorded is sent, as DogStatsd sends its buffer."""
        self.flush()

    def close_socket(self) -> None:
        """Nothing to do: the transport opens its socket, reconnects after an error, and
        closes it for good on ``close()``; the client stays usable, as DogStatsd's."""

    def pre_fork(self) -> None:
        """Nothing to do: conveyor handles forks itself (docs/lifecycle.md)."""

    def post_fork_parent(self) -> None:
        """Nothing to do: conveyor handles forks itself (docs/lifecycle.md)."""

    def post_fork_child(self) -> None:
        """Nothing to do: conveyor handles forks itself (docs/lifecycle.md)."""

    def enable_telemetry(self) -> None:
        """Nothing to do: conveyor sends no telemetry; ``statistics()`` has the facts."""

    def disable_telemetry(self) -> None:
        """Nothing to do: conveyor sends no telemetry; ``statistics()`` has the facts."""

    def stop(self, timeout: float | None = None) -> bool:
        """As DogStatsd's ``stop()``: send everything, end the sender thread and
        aggregation; the client stays usable, each later call written at once on the
        caller's thread. False if ``timeout`` seconds passed first."""
        if self._closed:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        stopped = self.disable_background_sender(timeout)
        self.disable_aggregation()
        self._batch = 1
        return self.flush(remaining(deadline)) and stopped

    def disable_background_sender(self, timeout: float | None = None) -> bool:
        """Send everything recorded, end the sender thread and do its work on the
        callers' threads from now on (``threaded=False``). False if ``timeout``
        seconds passed first."""
        if self._closed:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        self._threaded = False  # calls from now on do the work themselves
        flushed = self._rendezvous("flush", timeout)
        stopped = self._sender.stop_thread(remaining(deadline))
        with self._pressure_lock:
            if not self._closed:
                self._gate[0] = 1  # every call checks whether it is time to work
        return flushed and stopped

    def enable_background_sender(
        self,
        sender_queue_size: int = 0,
        sender_queue_timeout: float | None = 0,
        sender_queue_expiry_seconds: float = 10.0,
    ) -> None:
        """Start the sender thread again on the next call. ``sender_queue_size`` > 0
        sets ``max_queue``; ``sender_queue_timeout`` other than 0 sets the overflow
        policy, as at construction; 0 leaves either as it is."""
        size = not_negative("sender_queue_size", sender_queue_size)
        if sender_queue_timeout != 0:
            overflow, block_timeout = queue_policy(None, None, sender_queue_timeout)
        else:
            overflow, block_timeout = self._overflow, self._block_timeout
        if self._closed:
            return
        if self._sender.running:  # a thread a timed-out stop left: let it end first
            self._sender.join(None)
        with self._pressure_lock:
            if size:
                self._max_queue = size
                self._wake_at = max(1, size // 4)
                self._yield_at = max(self._wake_at, size // 2)
            self._overflow, self._block_timeout = overflow, block_timeout
            self._batch = self._dogstatsd.batch
            self._threaded = True
            self._gate[0] = 0  # the next call starts the thread

    def disable_aggregation(self) -> None:
        """Send what the aggregator holds, then send every call as its own line."""
        self._sender.set_aggregation(False, None, None)
        self._sender_options["aggregate"] = False  # a forked child's sender too

    def enable_aggregation(
        self, flush_interval: float | None = None, max_samples_per_context: int = 0
    ) -> None:
        """Fold calls per context again, every ``flush_interval`` seconds (None: as
        before), with ``max_samples_per_context`` samples (0: as before). Does nothing
        if aggregation is on, as in DogStatsd."""
        if self._sender_options["aggregate"]:
            return
        if flush_interval is not None and not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        samples = not_negative("max_samples_per_context", max_samples_per_context) or None
        self._sender.set_aggregation(True, flush_interval, samples)
        options = self._sender_options
        options["aggregate"] = True
        if flush_interval is not None:
            options["flush_interval"] = flush_interval
        if samples is not None:
            options["max_samples"] = samples

    @property
    def namespace(self) -> str | None:
        """The prefix of every metric name (fixed at construction)."""
        return self._dogstatsd.namespace or None

    @namespace.setter
    def namespace(self, value: str | None) -> None:
        raise AttributeError(
            "a Client's namespace is fixed at construction: make it with Client(namespace=...)"
        )

    @property
    def constant_tags(self) -> tuple[str, ...]:
        """The tags added to everything sent, the environment's included (fixed at
        construction: a tuple, so that an ``append`` fails rather than does nothing)."""
        return self._encoder.constant_tags

    @constant_tags.setter
    def constant_tags(self, value: tuple[str, ...]) -> None:
        raise AttributeError(
            "a Client's constant tags are fixed at construction: "
            "make it with Client(constant_tags=[...])"
        )

    @property
    def host(self) -> str | None:
        """The destination's host (None for a Unix socket)."""
        return destination(self._transport.url)[0]

    @property
    def port(self) -> int | None:
        """The destination's port (None for a Unix socket)."""
        return destination(self._transport.url)[1]

    @property
    def socket_path(self) -> str | None:
        """The destination's Unix socket path (None for UDP and TCP)."""
        return destination(self._transport.url)[2]

    @property
    def use_ms(self) -> bool:
        """Whether ``timed()`` and ``distributed()`` send milliseconds by default."""
        return self._use_ms

    @use_ms.setter
    def use_ms(self, value: bool) -> None:
        self._use_ms = bool(value)

    @property
    def default_sample_rate(self) -> float:
        """The sample rate of calls that give none."""
        return self._default_rate

    @default_sample_rate.setter
    def default_sample_rate(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError(f"default_sample_rate must be in (0, 1], got {value!r}")
        self._default_rate = float(value)
        self._apply_default_rate()

    @property
    def disable_buffering(self) -> bool:
        """False: conveyor always packs lines into packets (setting it does nothing)."""
        return False

    @disable_buffering.setter
    def disable_buffering(self, value: bool) -> None:
        pass


@dataclass
class DogStatsdState:
    """What ``datadog.DogStatsd``'s methods and attributes need, and calls never read."""

    namespace: str
    container_field: bytes  # b"|c:<id>" or b""
    cardinality_field: bytes  # b"|card:<level>" or b""
    batch: int  # as constructed: stop() makes it 1, enable_background_sender() restores it

    @property
    def prefix(self) -> str:
        return f"{self.namespace}." if self.namespace else ""


class OriginEncoder(Encoder):
    """Ends every metric line with DogStatsD's origin fields (``|c:`` container id,
    ``|card:`` cardinality), as ``datadog.DogStatsd`` does; the lines are packed
    shorter by as much, so that every packet still fits."""

    __slots__ = ("_origin",)

    def __init__(
        self,
        namespace: str | None,
        constant_tags: tuple[str, ...],
        max_line: int,
        origin: bytes,
    ) -> None:
        super().__init__(namespace, constant_tags, max_line - len(origin))
        self._origin = origin

    def metric(
        self,
        name: str,
        type_: str,
        values: Iterable[float | str],
        rate: float,
        tags: tuple[str, ...] | None,
    ) -> Iterator[bytes | WireError]:
        origin = self._origin
        for line in super().metric(name, type_, values, rate, tags):
            yield line if isinstance(line, WireError) else line + origin


def destination(url: str) -> tuple[str | None, int | None, str | None]:
    """``(host, port, socket_path)`` of a transport URL, as DogStatsd's attributes."""
    scheme, _, rest = url.partition("://")
    if scheme.startswith("unix"):
        return None, None, rest
    host, _, port = rest.rpartition(":")
    try:
        return host.removeprefix("[").removesuffix("]"), int(port), None
    except ValueError:  # a transport of the application's own, with its own URL form
        return None, None, None


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
