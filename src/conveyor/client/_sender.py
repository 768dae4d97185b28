"""The sender: the one thread that turns recorded calls into packets on a socket.

Callers append to two bounded deques (value-1 increments as ``(name, tags)`` keys,
everything else as tuples) and never wait for the sender. The sender wakes on a
short tick, when a queue passes a quarter of its bound, or when a control message
arrives; it drains the queues in batches, aggregates (or encodes each call as a line),
packs lines into packets no larger than the transport's limit, and writes them.

Control messages (flush, close) travel on their own deque. Processing one first drains
both data queues up to their length at that moment: everything recorded before the
control message was sent is ahead of that mark, so a flush covers exactly what was
recorded before it (and perhaps a little more), and nothing recorded later can hold it
back.

Every item is accounted for: the sender counts what it takes off the queues and what
it sends or drops, so ``recorded == sent + dropped + pending`` always holds.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from conveyor._ratelimit import RateLimitedLog
from conveyor.protocol import OversizedLineError, Packer
from conveyor.transport import Transport, TransportError

from ._aggregator import AggregatedLine, Aggregator, Key
from ._books import DROP_REASONS
from ._wire import Encoder, WireError

log = logging.getLogger("conveyor.client")

#: Items on the general queue: (type, (name, tags), value, rate) for metrics (the
#: context's key, made once by the client),
#: ("_e", line_bytes) and ("_sc", line_bytes) for pre-encoded events and checks, and
#: ("_t", line_bytes) for pre-encoded timestamped metrics (never aggregated).
Item = tuple[Any, ...]


@dataclass
class _Control:
    kind: str  # "flush" or "close"
    done: threading.Event
    ok: bool = False


class Sender:
    """Drains the client's queues into its transport; see the module docstring."""

    def __init__(
        self,
        *,
        queue: deque[Item],
        increments: deque[Key],
        transport: Transport,
        encoder: Encoder,
        aggregate: bool,
        flush_interval: float,
        max_samples: int,
        max_contexts: int,
        tick: float,
    ) -> None:
        self.queue = queue
        self.increments = increments
        self.control: deque[_Control] = deque()
        self._transport = transport
        self._encoder = encoder
        self._aggregate = aggregate
        self._flush_interval = flush_interval
        self._tick = tick
        self._max_samples = max_samples
        self._max_contexts = max_contexts
        self._aggregator = Aggregator(max_samples, max_contexts)
        self._packer = Packer(transport.max_packet_size)
        self._packed_items = 0  # recorded items inside the packer's pending datagram
        self._log = RateLimitedLog(log)
        self.wakeup = threading.Event()
        self.woken = False  # a caller set `wakeup` and the sender has not run since
        self.on_wake: Callable[[], None] = lambda: None  # the client lowers its gate
        self.space = threading.Condition(threading.Lock())  # callers blocked on a full queue
        self.blocked = 0
        self._thread: threading.Thread | None = None
        self._keep_thread = True  # False: the thread ends after its round (stop_thread)
        self._next_flush = time.monotonic() + flush_interval
        self._stopped = False
        # The books (written by the sender only).
        self.taken = 0  # items taken off the queues
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self.packets_sent = 0
        self.bytes_sent = 0
        self.flushes = 0
        self.rounds = 0  # calls of work(): each holds the GIL for its duration
        self._work_lock = threading.Lock()  # one worker at a time (threaded=False callers)

    # -- running ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._keep_thread = True
        self._thread = threading.Thread(target=self._run, name="conveyor-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped and self._keep_thread:
            self.wakeup.wait(self._sleep())
            self.wakeup.clear()
            self.woken = False
            self.on_wake()
            try:
                self.work()
            except Exception:  # the sender must survive anything; say so once a minute
                log.exception("conveyor sender: unexpected error (the sender keeps running)")

    def _sleep(self) -> float:
        """How long the thread waits when no caller wakes it.

        Unaggregated, a tick: lines leave within one. Aggregated, nothing leaves before
        the interval ends, so the sender sleeps until then: callers wake it sooner
        when a queue passes a quarter of its bound, and control messages at once.
        Under the GIL every round of the sender is time taken from the application's
        threads; few rounds make few slow requests (docs/client.md, "The tail")."""
        if not self._aggregate:
            return self._tick
        return min(max(self._next_flush - time.monotonic(), 0.0), self._flush_interval)

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop_thread(self, timeout: float | None) -> bool:
        """End the thread after its current round, leaving the transport open:
        ``work()`` goes on working when callers call it. False if it is still running
        after ``timeout`` seconds (it ends after its round all the same)."""
        self._keep_thread = False
        self.wakeup.set()
        self.join(timeout)
        return not self.running

    def set_aggregation(
        self, aggregate: bool, flush_interval: float | None, max_samples: int | None
    ) -> None:
        """Turn aggregation on or off for what is recorded from now on: what is queued
        is taken first, as it was meant; turning aggregation off then sends what the
        aggregator holds, so nothing folded stays behind; turning it on starts an empty
        aggregator with ``max_samples`` (None: as before)."""
        with self._work_lock:
            self._drain(len(self.queue), len(self.increments))
            if self._aggregate and not aggregate:
                self._emit(self._aggregator.drain())
            elif aggregate and not self._aggregate:
                self._max_samples = max_samples or self._max_samples
                self._aggregator = Aggregator(self._max_samples, self._max_contexts)
            self._send_pending()
            self._aggregate = aggregate
            if flush_interval is not None:
                self._flush_interval = flush_interval
            self._next_flush = time.monotonic() + self._flush_interval

    # -- the work -----------------------------------------------------------------------

    def work(self) -> None:
        """One round: control messages, the data queues, timers. Thread-safe."""
        with self._work_lock:
            self.rounds += 1
            while self.control:
                control = self.control.popleft()
                self._drain(len(self.queue), len(self.increments))
                self._flush_all()
                control.ok = True
                if control.kind == "close":
                    self._stopped = True
                    self._transport.close()
                control.done.set()
            if self._stopped:
                return
            self._drain(len(self.queue), len(self.increments))
            if self._aggregate and time.monotonic() >= self._next_flush:
                self._flush_aggregates()
            self._send_pending()

    def _drain(self, n_items: int, n_increments: int) -> None:
        if n_increments:
            # A C-level loop, where a busy client's items mostly go.
            counts = Counter(itertools.islice(iter(self.increments.popleft, None), n_increments))
            self.taken += n_increments
            if self._aggregate:
                refused = self._aggregator.add_increments(counts)
                if refused:
                    self._drop("context_limit", refused, "too many contexts in one interval")
            else:
                for (name, tags), n in counts.items():
                    for _ in range(n):
                        self._lines(self._encoder.metric(name, "c", (1,), 1.0, tags), 1)
        if n_items:
            self.taken += n_items
            popleft = self.queue.popleft
            aggregate = self._aggregate
            adders = self._aggregator.adders
            for _ in range(n_items):
                item = popleft()
                type_ = item[0]
                if type_ in {"_e", "_sc", "_t"}:
                    self._add(item[1], 1)
                elif aggregate:
                    _, key, value, rate = item
                    if not adders[type_](type_, key, value, rate):
                        self._drop("context_limit", 1, "too many contexts in one interval")
                else:
                    _, (name, tags), value, rate = item
                    lines = self._encoder.metric(name, type_, (value,), rate, tags)
                    self._lines(lines, 1)
        if self.blocked:
            with self.space:
                self.space.notify_all()

    def _lines(self, lines: Iterable[bytes | WireError], items: int) -> None:
        """Pack one context's lines; its items travel with the first line."""
        for line in lines:
            if isinstance(line, WireError):
                self._drop("invalid", items, str(line))
            else:
                self._add(line, items)
            items = 0

    def _add(self, line: bytes, items: int) -> None:
        try:
            datagram = self._packer.add(line)
        except OversizedLineError as error:
            self._drop("too_large", items, f"{error}: {line[:80]!r}...")
            return
        if datagram is not None:
            self._write(datagram, self._packed_items)
            self._packed_items = 0
        self._packed_items += items

    def _send_pending(self) -> None:
        datagram = self._packer.flush()
        if datagram is not None:
            items, self._packed_items = self._packed_items, 0
            self._write(datagram, items)

    def _flush_aggregates(self) -> None:
        self._next_flush = time.monotonic() + self._flush_interval
        self._emit(self._aggregator.drain())

    def _emit(self, lines: Iterable[AggregatedLine]) -> None:
        for agg in lines:
            self._lines(
                self._encoder.metric(agg.name, agg.type, agg.values, agg.sample_rate, agg.tags),
                agg.items,
            )

    def _flush_all(self) -> None:
        self.flushes += 1
        if self._aggregate:
            self._flush_aggregates()
        self._send_pending()

    def _write(self, packet: bytes, items: int) -> None:
        try:
            self._transport.send(packet)
        except TransportError as error:
            self._drop("transport", items, f"cannot write to {self._transport.url}: {error}")
            return
        self.sent += items
        self.packets_sent += 1
        self.bytes_sent += len(packet)

    def _drop(self, reason: str, items: int, message: str) -> None:
        assert reason in DROP_REASONS, reason
        self.dropped[reason] += items
        self._log.warning(reason, f"conveyor dropped {items} item(s): {message}")

    # -- books --------------------------------------------------------------------------

    @property
    def contexts(self) -> int:
        return self._aggregator.contexts

    @property
    def held(self) -> int:
        """Items taken off the queues but not yet sent or dropped."""
        return self.taken - self.sent - sum(self.dropped.values())

    def request(self, kind: str) -> _Control:
        control = _Control(kind, threading.Event())
        self.control.append(control)
        self.wakeup.set()
        return control
