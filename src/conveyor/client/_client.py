"""`Client`: the object an application creates once and calls from every thread.

The hot path (``increment`` and friends) does three things: find the context's key
(checked when the context was first seen), one ``deque.append`` and one length
comparison. ``deque.append`` is a single C call, atomic under the GIL and made
thread-safe by a per-object lock on free-threaded builds, so callers never take a
Python lock and never convoy. Everything else (starting the sender, overflow, waking
the sender early, noticing a fork) happens on the rare path that the length comparison
leads to: the fork gate ``_gate[0]`` is 0 until the sender runs, a quarter of the bound
afterwards, and 0 again in a forked child. The commonest calls have C twins
(``_speedups.c``) that do the same for the same cases and hand every other case here.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import types
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor import lifecycle
from conveyor.protocol import encode_metric, encode_tags
from conveyor.transport import Transport, transport_from_url

from ._aggregator import Key
from ._books import DROP_REASONS, ClientStatistics
from ._dogstatsd import DogStatsdMethods, DogStatsdState, OriginEncoder
from ._options import (
    OVERFLOWS,
    Overflow,
    TagsArg,
    environment_tags,
    negated,
    normalize_tags,
    not_negative,
    one_of,
    origin_fields,
    queue_policy,
    resolve_destination,
)
from ._sender import Item, Sender
from ._timed import Timed
from ._wire import Encoder, check_name, checked_number, encode_event, encode_service_check

if TYPE_CHECKING:
    from ._speedups import FastCall

_FastCall: type[FastCall] | None
try:  # the C twins of the commonest calls, where they were built (see _speedups.c)
    from conveyor.client._speedups import FastCall as _FastCall
except ImportError:  # pragma: no cover - a build without a C compiler
    _FastCall = None

# The methods with a C twin, and the type code each one queues (None: an increment's
# key goes to the increments deque).
_FAST_CALLS = {
    "increment": None,
    "count": "c",
    "gauge": "g",
    "histogram": "h",
    "distribution": "d",
    "timing": "ms",
}

_random = random.random
_INLINE_TICK = 0.1  # seconds between rounds of inline work (threaded=False)
_MAX_REMEMBERED = 10_000  # names, tag sets and counter keys remembered as checked
_ONE = 1  # the small int CPython caches: `value is _ONE` is true only for the int 1
_NOT_A_VALUE = object()  # no call passes it: see Client._unsampled_one
_sched_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


class Client(DogStatsdMethods):
    """A DogStatsD client whose calls never block, shared by every thread.

    Call-compatible with ``datadog.DogStatsd``: the constructor takes DogStatsd's
    arguments in DogStatsd's order, and the methods take the same arguments
    (``docs/guides/from-datadog.md`` says what each DogStatsd option becomes). Calls go
    to a bounded queue; a companion sender thread, started on first use, aggregates
    them per interval and writes packets. ``flush()`` is a rendez-vous with that thread.

    Args:
        host, port: a UDP destination (default ``127.0.0.1:8125``, or the environment).
        namespace: prefixed to every metric name, with a dot.
        constant_tags: tags added to everything sent (``tags=`` is the same).
        flush_interval: the aggregation interval, in seconds.
        use_ms: ``timed()`` and ``distributed()`` send milliseconds, not seconds.
        socket_path: a Unix datagram socket (wins over ``host``/``port``).
        default_sample_rate: the sample rate of calls that give none.
        url: ``udp://host:port``, ``unix:///path``, ``unixstream:///path`` or
            ``tcp://host:port``; wins over ``host``/``port``. Without any of these the
            client reads ``CONVEYOR_URL``, ``DD_DOGSTATSD_URL``, ``DD_DOGSTATSD_SOCKET``,
            ``DD_AGENT_HOST`` and ``DD_DOGSTATSD_PORT``.
        aggregate: fold calls per context for ``flush_interval`` seconds (counters
            summed, gauges last, sets distinct, samples in a bounded reservoir of
            ``max_samples_per_context``, 64 by default). With False every call is sent
            as its own line. True by default.
        max_queue: the bound of each of the two queues between callers and the sender
            (65,536 by default).
        overflow: what a call does when its queue is full: ``"drop_newest"`` (the
            default), ``"drop_oldest"``, or ``"block"`` for up to ``block_timeout``
            seconds (1 by default), then drop. Every drop is counted by reason in
            ``statistics()``.
        threaded: False does the sender's work on the callers' threads, for hosts that
            allow no threads; the work then happens on a call once ``batch`` calls
            are waiting or 0.1 s has passed, on ``flush()`` and at exit.
        max_packet_size: the largest packet written (default: 1432 bytes for UDP, so
            that no datagram is fragmented; 8192 for Unix sockets and TCP).
        transport: a ready :class:`conveyor.transport.Transport` (overrides the URL).

    The other positional parameters are DogStatsd's: ``disable_aggregation``
    (``aggregate``), ``max_metric_samples_per_context`` (``max_samples_per_context``),
    ``disable_background_sender`` (``threaded``), ``sender_queue_size``
    (``max_queue``), ``sender_queue_timeout`` (``overflow``/``block_timeout``),
    ``max_buffer_len`` (``max_packet_size``), ``use_default_route`` (the host becomes
    the default gateway), ``container_id`` and ``cardinality`` (sent as ``|c:`` and
    ``|card:`` on metric lines). The rest change nothing conveyor does and are accepted
    for compatibility: ``max_buffer_size`` (unused by DogStatsd too),
    ``disable_buffering`` (lines are always packed), ``disable_telemetry`` and
    ``telemetry_*`` (conveyor sends no telemetry: ``statistics()`` has the facts),
    ``origin_detection_enabled`` (conveyor reads no cgroups), ``socket_timeout``,
    ``socket_connect_retry`` (the transport has its own timeouts and reconnects),
    ``sender_queue_expiry_seconds`` (nothing queued expires) and ``track_instance``
    (forks are always handled). A DogStatsd name given with its conveyor name raises
    ``TypeError``.
    """

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        max_buffer_size: int | None = None,
        flush_interval: float = 2.0,
        disable_aggregation: bool | None = None,
        disable_buffering: bool = True,
        namespace: str | None = None,
        constant_tags: TagsArg = None,
        use_ms: bool = False,
        use_default_route: bool = False,
        socket_path: str | None = None,
        default_sample_rate: float = 1.0,
        disable_telemetry: bool = False,
        telemetry_min_flush_interval: float = 10,
        telemetry_host: str | None = None,
        telemetry_port: int | str | None = None,
        telemetry_socket_path: str | None = None,
        max_buffer_len: int = 0,
        max_metric_samples_per_context: int = 0,
        container_id: str | None = None,
        origin_detection_enabled: bool = True,
        cardinality: str | None = None,
        socket_timeout: float | None = 0,
        telemetry_socket_timeout: float | None = 0,
        disable_background_sender: bool | None = None,
        sender_queue_size: int = 0,
        sender_queue_timeout: float | None = 0,
        sender_queue_expiry_seconds: float = 10.0,
        track_instance: bool = True,
        socket_connect_retry: bool = False,
        *,
        tags: TagsArg = None,
        url: str | None = None,
        aggregate: bool | None = None,
        max_samples_per_context: int | None = None,
        max_contexts: int = 50_000,
        max_queue: int | None = None,
        overflow: Overflow | None = None,
        block_timeout: float | None = None,
        max_packet_size: int | None = None,
        threaded: bool | None = None,
        batch: int = 512,
        transport: Transport | None = None,
    ) -> None:
        # What used to be conveyor's third and fourth positional parameters (namespace,
        # tags) now lands on DogStatsd's: say so rather than ignore a namespace.
        if max_buffer_size is not None and (
            not isinstance(max_buffer_size, int) or isinstance(max_buffer_size, bool)
        ):
            raise TypeError(
                f"the third positional argument is DogStatsd's max_buffer_size (an int, "
                f"unused), not {max_buffer_size!r}: pass namespace= and tags= by keyword"
            )
        if not isinstance(flush_interval, (int, float)) or isinstance(flush_interval, bool):
            raise TypeError(
                f"flush_interval (the fourth positional argument) must be a number of "
                f"seconds, not {flush_interval!r}: pass namespace= and tags= by keyword"
            )
        aggregate = one_of(
            "aggregate", aggregate, "disable_aggregation", negated(disable_aggregation)
        )
        threaded = one_of(
            "threaded", threaded, "disable_background_sender", negated(disable_background_sender)
        )
        max_samples_per_context = one_of(
            "max_samples_per_context",
            max_samples_per_context,
            "max_metric_samples_per_context",
            not_negative("max_metric_samples_per_context", max_metric_samples_per_context) or None,
        )
        max_queue = one_of(
            "max_queue",
            max_queue,
            "sender_queue_size",
            not_negative("sender_queue_size", sender_queue_size) or None,
        )
        max_packet_size = one_of(
            "max_packet_size",
            max_packet_size,
            "max_buffer_len",
            not_negative("max_buffer_len", max_buffer_len) or None,
        )
        overflow, block_timeout = queue_policy(overflow, block_timeout, sender_queue_timeout)
        container_field = origin_fields(container_id, None)
        cardinality_field = origin_fields(None, cardinality)
        origin = container_field + cardinality_field
        if max_queue is None:
            max_queue = 65_536
        if max_samples_per_context is None:
            max_samples_per_context = 64
        if overflow not in OVERFLOWS:
            raise ValueError(f"overflow must be one of {OVERFLOWS}, not {overflow!r}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be > 0 seconds, got {flush_interval}")
        if not 0 < default_sample_rate <= 1:
            raise ValueError(f"default_sample_rate must be in (0, 1], got {default_sample_rate}")
        if max_samples_per_context < 1 or max_contexts < 1 or batch < 1:
            raise ValueError("max_samples_per_context, max_contexts and batch must be >= 1")
        if tags is not None and constant_tags is not None:
            raise TypeError("give constant tags as tags= or constant_tags=, not both")
        if transport is None:
            destination = resolve_destination(url, host, port, socket_path, use_default_route)
            transport = transport_from_url(destination.url, max_packet_size=max_packet_size)
        self._transport = transport
        constant = normalize_tags(tags if tags is not None else constant_tags) or ()
        constant = (*constant, *environment_tags())
        max_line = transport.max_packet_size - 1  # a packet, less the line's newline
        self._encoder = (
            OriginEncoder(namespace, constant, max_line, origin)
            if origin
            else Encoder(namespace, constant, max_line)
        )
        # What calls have already checked, each bounded (past the bound, calls check
        # again): metric names, tag sets, and contexts. A context's key is found by
        # name, then by tags, so that a call builds no (name, tags) tuple to look it
        # up: `_contexts[name][tags]` is the context's (name, tags) key, made once.
        self._names: set[str] = set()
        self._tag_sets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._contexts: dict[str, dict[tuple[str, ...] | None, Key]] = {}
        self._context_count = 0
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._max_queue = max_queue
        self._default_rate = float(default_sample_rate)
        # What `increment`'s fast path takes: value-1 calls when they are not sampled.
        # With a default sample rate below 1 they must be, so no value matches and
        # every increment goes through `_metric`, which samples (`_apply_default_rate`).
        self._unsampled_one: object = _ONE
        self._use_ms = use_ms
        self._threaded = threaded is not False
        self._batch = batch
        # What the DogStatsd-compatible methods need and the hot path never reads, in
        # one attribute: the instance keeps few enough attributes for CPython's
        # fastest attribute lookups.
        self._dogstatsd = DogStatsdState(namespace or "", container_field, cardinality_field, batch)
        self._queue: deque[Item] = deque()
        self._increments: deque[Key] = deque()
        self._pressure_lock = threading.Lock()
        self._fork_locks: dict[int, threading.Lock] = {}  # see _after_fork_without_hooks
        self._queue_drops = dict.fromkeys(DROP_REASONS, 0)
        self._closed = False
        self._wake_at = max(1, max_queue // 4)  # wake the sender early from here
        self._yield_at = max(self._wake_at, max_queue // 2)
        self._inline_due = 0.0
        self._sender_options = {
            "aggregate": aggregate is not False,
            "flush_interval": flush_interval,
            "max_samples": max_samples_per_context,
            "max_contexts": max_contexts,
        }
        self._sender = self._new_sender()
        self._pid = os.getpid()
        # The hot path compares queue lengths with `_gate[0]`: 0 until the sender runs,
        # and 0 again in any forked child (see conveyor.lifecycle.ForkGate), so the
        # first call after either takes the rare path.
        self._fork_gate = lifecycle.ForkGate()
        self._gate = self._fork_gate.cell
        self._apply_default_rate()
        lifecycle.join(self)

    def _apply_default_rate(self) -> None:
        """Choose the fast paths for the current default sample rate: with 1.0, the
        C twins of the commonest calls where they were built (see _speedups.c); below,
        none at all, so that every call is sampled."""
        unsampled = self._default_rate == 1.0
        self._unsampled_one = _ONE if unsampled else _NOT_A_VALUE
        if _FastCall is None:
            return
        for name, type_code in _FAST_CALLS.items():
            method = getattr(Client, name)
            if getattr(type(self), name) is not method:
                continue  # a subclass's own method stays
            if unsampled:
                # `client.gauge` finds this instance attribute before the method: the
                # same fast path in C, handing every other case to the method. (Set as
                # an attribute: touching `self.__dict__` would slow every read of one.)
                queue = self._increments if type_code is None else self._queue
                fast = _FastCall(
                    type_code,
                    self._contexts,
                    queue,
                    self._gate,
                    self._pressure,
                    types.MethodType(method, self),
                )
                setattr(self, name, fast)
            else:
                # The method again, which samples. (Not `vars(self)`: see above.)
                with contextlib.suppress(AttributeError):
                    delattr(self, name)

    def _new_sender(self) -> Sender:
        sender = Sender(
            queue=self._queue,
            increments=self._increments,
            transport=self._transport,
            encoder=self._encoder,
            tick=0.1,
            **self._sender_options,  # type: ignore[arg-type]
        )
        sender.on_wake = self._lower_gate
        return sender

    def _lower_gate(self) -> None:
        """Called by the sender each time it runs: wake it early again from a quarter."""
        if self._gate[0] == self._yield_at and not self._closed:
            self._gate[0] = self._wake_at

    # -- metrics: the hot path ----------------------------------------------------------

    def increment(
        self,
        metric: str,
        value: float = 1,
        tags: TagsArg = None,
        sample_rate: float | None = None,
    ) -> None:
        """Add ``value`` (default 1) to the counter ``metric``."""
        if value is self._unsampled_one and sample_rate is None:  # one identity test
            # The queue takes the context's own key, checked and kept when the context
            # was first seen: no new object per call stays alive until the sender runs,
            # so the calls do not keep the cycle collector busy (docs/client.md). Only
            # a list is turned into a tuple here; None and tuples are looked up as they
            # are; anything else (a dict) misses and goes through `_context`.
            try:
                key = self._contexts[metric][tuple(tags) if tags.__class__ is list else tags]  # type: ignore[index]
            except (KeyError, TypeError):
                key = self._context(metric, tags)
            queue = self._increments
            queue.append(key)
            if len(queue) >= self._gate[0]:
                self._pressure(queue)
        else:
            self._metric("c", metric, value, tags, sample_rate)

    def decrement(
        self,
        metric: str,
        value: float = 1,
        tags: TagsArg = None,
        sample_rate: float | None = None,
    ) -> None:
        """Subtract ``value`` (default 1) from the counter ``metric``."""
        self.count(metric, -checked_number(value, metric), tags, sample_rate)

    def count(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Add ``value`` to the counter ``metric``."""
        self._metric("c", metric, value, tags, sample_rate)

    def gauge(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Set the gauge ``metric`` to ``value`` (the last value in an interval wins)."""
        self._metric("g", metric, value, tags, sample_rate)

    def histogram(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Record a sample of ``metric``; the agent computes its statistics."""
        self._metric("h", metric, value, tags, sample_rate)

    def distribution(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Record a sample of ``metric`` for a global (server-side) distribution."""
        self._metric("d", metric, value, tags, sample_rate)

    def timing(
        self, metric: str, value: float, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Record a duration sample of ``metric`` (a ``ms`` line)."""
        self._metric("ms", metric, value, tags, sample_rate)

    def set(
        self, metric: str, value: str | int, tags: TagsArg = None, sample_rate: float | None = None
    ) -> None:
        """Count ``value`` as a member of the set ``metric`` (distinct members are counted)."""
        if metric not in self._names:
            self._check_name(metric)
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise TypeError(f"set {metric!r}: a member must be a str or an int, not {value!r}")
        encode_metric(metric, "s", value)  # a member the format cannot carry raises here
        rate = self._rate(sample_rate, metric)
        if rate:
            self._enqueue(("s", self._context(metric, tags), value, rate))

    def timed(
        self,
        metric: str | None = None,
        tags: TagsArg = None,
        sample_rate: float | None = None,
        use_ms: bool | None = None,
    ) -> Timed:
        """Time a block (``with``), a function or a coroutine function (decorator).

        Sends a ``timing`` in seconds, or milliseconds with ``use_ms=True`` (as
        ``datadog.DogStatsd`` does). As a decorator without ``metric``, the name is the
        function's module and qualified name.
        """
        if metric is not None and metric not in self._names:
            self._check_name(metric)
        return Timed(
            self,
            metric,
            self._checked_tags(tags),
            sample_rate,
            self._use_ms if use_ms is None else use_ms,
        )

    def counter(self, metric: str, tags: TagsArg = None) -> BoundCounter:
        """A counter bound to ``metric`` and ``tags``, for hot loops: its ``increment()``
        skips every per-call check."""
        if metric not in self._names:
            self._check_name(metric)
        return BoundCounter(self, self._context(metric, tags))

    # -- events and service checks ------------------------------------------------------

    def event(
        self,
        title: str,
        message: str,
        alert_type: str | None = None,
        aggregation_key: str | None = None,
        source_type_name: str | None = None,
        date_happened: int | None = None,
        priority: str | None = None,
        tags: TagsArg = None,
        hostname: str | None = None,
    ) -> None:
        """Send an event to the event stream (never aggregated). Raises ``ValueError``
        at once for what the format cannot carry."""
        line = encode_event(
            title,
            message,
            alert_type=alert_type,  # type: ignore[arg-type]
            aggregation_key=aggregation_key,
            source_type_name=source_type_name,
            timestamp=date_happened,
            priority=priority,  # type: ignore[arg-type]
            tags=(*(_tags(tags) or ()), *self._encoder.constant_tags),
            hostname=hostname,
        )
        self._enqueue(("_e", line))

    def service_check(
        self,
        check_name: str,
        status: int,
        tags: TagsArg = None,
        timestamp: int | None = None,
        hostname: str | None = None,
        message: str | None = None,
    ) -> None:
        """Report the status (``Client.OK``, ``WARNING``, ``CRITICAL``, ``UNKNOWN``) of a
        service (never aggregated)."""
        line = encode_service_check(
            check_name,  # not namespaced, as in datadog.DogStatsd
            status,
            tags=(*(_tags(tags) or ()), *self._encoder.constant_tags),
            timestamp=timestamp,
            hostname=hostname,
            message=message,
        )
        self._enqueue(("_sc", line))

    # -- the rest of the path -----------------------------------------------------------

    def _metric(
        self,
        type_: str,
        metric: str,
        value: float,
        tags: TagsArg,
        sample_rate: float | None,
    ) -> None:
        """Every metric but value-1 increments and sets: checks, then one append.
        Kept in one function, with nothing else called on the common path."""
        try:  # the context's own key, found as increments find theirs
            key = self._contexts[metric][tuple(tags) if tags.__class__ is list else tags]  # type: ignore[index]
        except (KeyError, TypeError):
            key = self._context(metric, tags)
        kind = value.__class__
        if kind is not int and (kind is not float or value - value != 0.0):  # NaN, inf
            value = checked_number(value, metric)
        if sample_rate is None and self._default_rate == 1.0:
            rate = 1.0
        else:
            rate = self._rate(sample_rate, metric)
            if not rate:
                return
        queue = self._queue
        queue.append((type_, key, value, rate))
        if len(queue) >= self._gate[0]:
            self._pressure(queue)

    def _rate(self, sample_rate: float | None, metric: str) -> float:
        """The rate to record with, or 0.0 if client-side sampling drops this call
        (on purpose, so not counted as a drop: the rate scales what is kept)."""
        if sample_rate is None:
            sample_rate = self._default_rate
            if sample_rate == 1.0:
                return 1.0
        elif not 0 < sample_rate <= 1:
            raise ValueError(f"{metric!r}: sample_rate must be in (0, 1], got {sample_rate!r}")
        if sample_rate < 1.0 and _random() > sample_rate:
            return 0.0
        return float(sample_rate)

    def _enqueue(self, item: Item) -> None:
        queue = self._queue
        queue.append(item)
        if len(queue) >= self._gate[0]:
            self._pressure(queue)

    def _check_name(self, metric: str) -> None:
        check_name(metric)  # raises ValueError/TypeError with the reason
        if len(self._names) < _MAX_REMEMBERED:
            self._names.add(metric)

    def _checked_tags(self, tags: TagsArg) -> tuple[str, ...] | None:
        """A tag set seen for the first time: normalised, checked (a tag that is not a
        str raises here, at the call, rather than failing the sender's batch later) and
        remembered, so that later calls queue this very tuple."""
        tags = _tags(tags)
        if tags is None:
            return None
        try:
            return self._tag_sets[tags]
        except KeyError:
            pass
        except TypeError:  # an unhashable tag: not a str, so encode_tags names it
            pass
        encode_tags(tags)  # raises ProtocolError (a ValueError) with the reason
        if len(self._tag_sets) < _MAX_REMEMBERED:
            self._tag_sets[tags] = tags
        return tags

    def _context(self, metric: str, tags: TagsArg) -> Key:
        """The (name, tags) key of a context the fast lookup missed: tags given in
        another form (a dict), a context seen for the first time (checked, then kept),
        or any context once ``_MAX_REMEMBERED`` are kept (checked on every call)."""
        if not (metric.__class__ is str and metric in self._names):
            self._check_name(metric)  # raises for a name the format cannot carry
        tags = self._checked_tags(tags)  # normalised and hashable from here
        by_tags = self._contexts.get(metric)
        if by_tags is not None:
            key = by_tags.get(tags)
            if key is not None:
                return key
        key = (metric, tags)
        if self._context_count < _MAX_REMEMBERED:
            # setdefault twice: two threads meeting a new context here keep one table
            # and one key between them (a racing count only moves the bound by one).
            key = self._contexts.setdefault(metric, {}).setdefault(tags, key)
            self._context_count += 1
        return key

    def _pressure(self, queue: deque[Any]) -> None:
        """The rare path: start the sender, wake it early, apply the overflow policy."""
        depth = len(queue)
        if self._gate[0] == 0 or depth > self._max_queue:
            self._pressure_locked(queue)
        if not self._threaded:
            # No sender thread: do its work here once a batch is waiting or a tick has
            # passed, so that a quiet process still delivers (at its next call).
            now = time.monotonic()
            if depth >= self._batch or now >= self._inline_due:
                self._inline_due = now + _INLINE_TICK
                self._sender.work()
            return
        sender = self._sender
        if not sender.woken:
            sender.woken = True
            # Until the sender runs (up to a switch interval under the GIL), further
            # calls need not come here before the half-full mark, where callers yield.
            if self._gate[0] == self._wake_at:
                self._gate[0] = self._yield_at
            sender.wakeup.set()
        if depth > self._yield_at:
            # Overloaded: give the GIL away once so the sender gets a turn (under the
            # GIL it is one runnable thread among all the callers). Microseconds, and
            # never a wait for the sender; without it the queue fills and drops.
            _sched_yield()

    def _pressure_locked(self, queue: deque[Any]) -> None:
        if self._pid != os.getpid():  # a fork no Python hook told us about (uWSGI)
            self._after_fork_without_hooks(queue)
        with self._pressure_lock:
            if self._closed:
                if queue:
                    queue.pop()
                    self._queue_drops["closed"] += 1
                return
            if self._gate[0] == 0:
                self._start()
            if len(queue) > self._max_queue:
                if self._overflow == "drop_newest":
                    queue.pop()
                    self._queue_drops["queue_full"] += 1
                elif self._overflow == "drop_oldest":
                    queue.popleft()
                    self._queue_drops["queue_evicted"] += 1
        if self._overflow == "block" and len(queue) > self._max_queue:
            self._block(queue)

    def _block(self, queue: deque[Any]) -> None:
        sender = self._sender
        deadline = time.monotonic() + self._block_timeout
        with sender.space:
            sender.blocked += 1
            try:
                while len(queue) > self._max_queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    sender.wakeup.set()
                    sender.space.wait(remaining)
            finally:
                sender.blocked -= 1
        if len(queue) > self._max_queue:
            with self._pressure_lock:
                if len(queue) > self._max_queue:
                    queue.pop()
                    self._queue_drops["block_timeout"] += 1

    def _start(self) -> None:
        # From now on data may be held: flush it at exit even if the application drops
        # its last reference to this client (a local of main(), say).
        lifecycle.hold(self)
        if self._threaded:
            if not self._sender.running:
                self._sender.start()
            self._gate[0] = self._wake_at
        else:
            self._gate[0] = 1  # every call checks the batch size and the clock

    # -- rendez-vous, close, books ------------------------------------------------------

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Send everything recorded before this call, including the current aggregation
        interval. Returns True once it is written to the transport (or counted as
        dropped), False if ``timeout`` seconds passed first."""
        return self._rendezvous("flush", timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Flush, stop the sender and close the transport. Later calls are counted as
        dropped (reason ``"closed"``). Returns False if the flush did not finish in time."""
        if self._closed:
            return True
        ok = self._rendezvous("close", timeout)
        with self._pressure_lock:
            self._closed = True
            self._gate[0] = 0
            leftover = len(self._queue) + len(self._increments)
            self._queue.clear()
            self._increments.clear()
            self._queue_drops["closed"] += leftover
        lifecycle.release(self)
        self._sender.join(timeout)
        self._gate[0] = 0  # again: a last _lower_gate() may have raced with the close
        return ok

    def _rendezvous(self, kind: str, timeout: float | None) -> bool:
        if self._closed:
            return kind == "flush" and not (self._queue or self._increments)
        if self._pid != os.getpid():
            self._after_fork_without_hooks()
        with self._pressure_lock:
            if self._gate[0] == 0:
                self._start()
        control = self._sender.request(kind)
        if not self._threaded:
            self._sender.work()
        return control.done.wait(timeout) and control.ok

    # -- fork and exit (called by conveyor.lifecycle) ----------------------------------

    def _lifecycle_after_fork(self) -> None:
        """In a forked child: start afresh. The parent's pending data stays the parent's
        to send; locks that a parent thread may have held are replaced; no thread is
        started until the child records something."""
        self._pid = os.getpid()
        self._pressure_lock = threading.Lock()
        self._queue.clear()  # cleared in place: bound counters hold these deques
        self._increments.clear()
        self._queue_drops = dict.fromkeys(DROP_REASONS, 0)
        self._sender = self._new_sender()
        self._gate[0] = 0

    def _after_fork_without_hooks(self, queue: deque[Any] | None = None) -> None:
        """A fork made in C that ran no Python hook (uWSGI without
        ``py-call-osafterfork``). CPython's own threading state was not reset either:
        a lock a parent thread held at the fork stays held, and a new thread may
        deadlock on it. So this process never starts a sender thread: the callers'
        threads do its work every ``batch`` calls, on ``flush()`` and at exit.

        ``queue`` holds the parent's pending items (the parent sends them) and, last,
        the item of the call that noticed the fork: that one is kept. Threads the child
        started may notice the fork at once: one resets, the others wait for it and
        reset nothing (a second reset would clear what was recorded after the first).
        ``dict.setdefault`` is atomic, so they all get the same lock, made in this
        process (a lock inherited from the parent may be held)."""
        pid = os.getpid()
        lock = self._fork_locks.setdefault(pid, threading.Lock())
        with lock:
            if self._pid == pid:
                return
            item = queue.pop() if queue else None
            self._lifecycle_after_fork()
            self._threaded = False
            self._fork_locks = {pid: lock}  # nothing inherited is ever looked up
            if queue is not None and item is not None:
                queue.append(item)

    def _lifecycle_flush(self, deadline: float) -> None:
        """At exit, or at the end of a worker process: flush by ``deadline`` without
        starting a thread (Python 3.12+ forbids new threads at exit)."""
        if self._pid != os.getpid():
            self._after_fork_without_hooks()  # nothing recorded here since the fork
        if self._closed or self._gate[0] == 0:
            return  # closed, or nothing recorded since the start or the fork
        remaining = max(0.0, deadline - time.monotonic())
        control = self._sender.request("flush")
        if not self._sender.running:
            self._sender.work()
        control.done.wait(remaining)

    def statistics(self) -> ClientStatistics:
        """A snapshot of what was recorded, sent and dropped, and what is pending."""
        sender = self._sender
        queue_depth = len(self._queue) + len(self._increments)
        with self._pressure_lock:
            queue_drops = dict(self._queue_drops)
        dropped = {reason: queue_drops[reason] + sender.dropped[reason] for reason in DROP_REASONS}
        held = sender.held
        recorded = sender.taken + sum(queue_drops.values()) + queue_depth
        return ClientStatistics(
            recorded=recorded,
            sent=sender.sent,
            dropped=dropped,
            pending=queue_depth + held,
            queue_depth=queue_depth,
            queue_capacity=2 * self._max_queue,
            contexts=sender.contexts,
            packets_sent=sender.packets_sent,
            bytes_sent=sender.bytes_sent,
            flushes=sender.flushes,
            sender_rounds=sender.rounds,
            sender_running=sender.running,
            destination=self._transport.url,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self._transport.url!r})"


class BoundCounter:
    """A counter bound to one name and tag set: the cheapest call the client offers."""

    __slots__ = ("_client", "_gate", "_key", "_queue")

    def __init__(self, client: Client, key: Key) -> None:
        self._client = client
        self._key = key
        # The client's deque (cleared in place after a fork, never replaced) and its
        # fork gate (the same memory for the client's life), held directly: one
        # attribute read each instead of two.
        self._queue = client._increments
        self._gate = client._gate

    def increment(self, value: float = 1) -> None:
        """Add ``value`` (default 1)."""
        if value is _ONE:
            queue = self._queue
            queue.append(self._key)
            if len(queue) >= self._gate[0]:
                self._client._pressure(queue)
        else:
            self._client.count(self._key[0], value, self._key[1])

    def decrement(self, value: float = 1) -> None:
        """Subtract ``value`` (default 1)."""
        self._client.count(self._key[0], -checked_number(value, self._key[0]), self._key[1])


def _tags(tags: TagsArg) -> tuple[str, ...] | None:
    if tags is None:
        return None
    return tuple(tags) if tags.__class__ is list else normalize_tags(tags)


__all__ = ["BoundCounter", "Client"]
