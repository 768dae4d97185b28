"""`Dispatcher`: hands items to a transport from a self-sizing pool of worker threads.

The path of an item, and who owns it at each step::

    submit() ──> ring ──(spool writer: group commit)──> workers ──> transport
                  ▲                                       │ transient failure
                  └─ overflow policy            retry heap (supervisor) ──> ready

* ``submit()`` claims a slot of a :class:`conveyor.ring.RingQueue` through a
  multi-producer sequence, fills it and publishes it: no lock of ours, no allocation
  besides the item, no wait (unless ``overflow="block"``).
* With a spool, a single-consumer stage sits between the producers and the workers
  (``pub -> stage -> workers -> pub``): it commits what was accepted to disk, then
  releases it. Workers can only see committed items, so nothing is sent that a crash
  could forget it sent, and nothing committed is lost.
* Workers share a multi-consumer sequence, build a batch (bounded by the transport's
  count and byte limits), and send it. A transient failure puts the batch on the
  *retry heap* with a due time, and the worker moves on: an item waiting for a retry
  does not hold a thread. The supervisor moves due batches to a ``ready`` deque that
  workers drain before the ring.
* The supervisor also sizes the pool (see :mod:`._pool`) and sleeps as long as it can:
  while the endpoint is down (breaker open) nothing runs until the breaker's timer.

Fork and exit follow :mod:`conveyor.lifecycle`: a forked child starts with an empty
ring, fresh locks, no threads and its own spool connection; at exit the exiting thread
helps the workers drain within the deadline, without starting a thread.

*Inline mode*: in a child forked in C without Python hooks (uWSGI without
``py-call-osafterfork``) CPython's thread state was not reset and a new thread may
deadlock, so no thread is ever started there. ``submit()`` does the work instead, on
the caller's thread: at most one *round* per call, when a tick has passed since the
last round or a full batch waits. A round commits the spool's window, moves due
retries, and sends at most one batch, only if the breaker permits, with the request
capped at ``inline_timeout``. A retry that is not due is never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from conveyor import lifecycle
from conveyor._ratelimit import RateLimitedLog
from conveyor.ring import (
    AlertedError,
    MCSequence,
    MPSequence,
    RingQueue,
    RingTimeoutError,
    SCSequence,
)

from ._books import Books, DeliveryStatistics, Waiter
from ._breaker import PROBE, WAIT, CircuitBreaker
from ._pool import Pool
from ._protocol import BatchTransport, Outcome
from ._retry import Retry, is_retryable, parse_retry_after
from ._spool import Spool

log = logging.getLogger("conveyor.delivery")

Overflow = Literal["drop_oldest", "drop_newest", "block"]
_OVERFLOWS = ("drop_oldest", "drop_newest", "block")

_INLINE_TICK = 0.1  # clock seconds between inline rounds that a full batch does not force
_WAKE = 1 << 62  # what a worker's poll returns for "not a cursor, but look around"
_FRESH, _SPOOLED, _DEAD = 0, 1, 2  # slot states
_sched_yield = getattr(os, "sched_yield", lambda: time.sleep(0))


class _Slot:
    """One ring slot, reused forever."""

    __slots__ = ("body", "item", "key", "row", "state", "t")

    def __init__(self) -> None:
        self.item: object = None
        self.t = 0.0
        self.state = _FRESH
        self.key = ""
        self.body: bytes | None = None
        self.row = 0


class _Envelope:
    """An item taken off the ring: encoded, numbered, with its retry state."""

    __slots__ = ("attempts", "body", "first", "key", "row", "seq")

    def __init__(self, key: str, body: bytes, seq: int, row: int) -> None:
        self.key = key
        self.body = body
        self.seq = seq
        self.row = row
        self.first = -1.0  # clock time of the first attempt
        self.attempts = 0


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class Dispatcher:
    """Delivers items (JSON-serialisable objects) through ``transport``, reliably.

    ``submit()`` never blocks (unless ``overflow="block"``) and is safe from any thread
    and from coroutines. Items are sent in batches by a pool of worker threads that
    grows under load and shrinks when idle; transient failures are retried with
    exponential back-off and full jitter within a deadline per item; a circuit breaker
    stops requests to a dead endpoint and probes it until it is back. Every item ends
    up delivered, rejected (by the response's reason) or dropped (by reason), and
    :meth:`statistics` says how many of each, and how many are pending.

    Args:
        transport: where batches go, e.g. :class:`conveyor.transport.HTTPTransport`.
        min_workers, max_workers: bounds of the pool (``min_workers`` may be 0).
        max_queue: items held in memory waiting for a worker.
        overflow: a full queue refuses the new item (``"drop_newest"``), evicts the
            oldest queued item (``"drop_oldest"``) or blocks the caller for up to
            ``block_timeout`` seconds and then refuses it (``"block"``).
        retry: back-off and deadline of transient failures (:class:`Retry`).
        spool: a file path: accepted items are committed to an SQLite file every
            ``spool_window`` seconds, deleted once delivered, and left-overs of an
            earlier process are sent. At-least-once: items carry idempotency keys.
        max_spool: the most items the spool holds; beyond it ``overflow`` applies.
        idle_timeout: seconds a worker waits for work before it leaves (above
            ``min_workers``).
        grow_depth, grow_age: the pool grows when the queue is deeper than
            ``grow_depth`` items (default: one batch) or its oldest item is older than
            ``grow_age`` seconds, and no worker is idle.
        breaker_threshold, breaker_cooldown: consecutive failed requests that open
            the circuit breaker, and its first cool-down (doubling while probes fail,
            up to ``retry.maximum``).
        inline_timeout: in a process that may not start threads (a child forked in C
            without Python hooks, e.g. by uWSGI without ``py-call-osafterfork``), the
            cap in seconds of the one request a ``submit()`` may make on its caller's
            thread (see ``docs/delivery.md``, "Inline mode").
        clock, wall_clock: injectable time sources (monotonic, and epoch seconds for
            ``Retry-After`` dates), for tests.
    """

    def __init__(
        self,
        transport: BatchTransport,
        *,
        min_workers: int = 1,
        max_workers: int = 8,
        max_queue: int = 10_000,
        overflow: Overflow = "drop_oldest",
        block_timeout: float = 5.0,
        retry: Retry | None = None,
        spool: str | os.PathLike[str] | None = None,
        max_spool: int = 1_000_000,
        spool_window: float = 0.05,
        spool_durability: Literal["normal", "full"] = "normal",
        idle_timeout: float = 5.0,
        grow_depth: int | None = None,
        grow_age: float = 0.25,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 1.0,
        inline_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        name: str = "conveyor-delivery",
    ) -> None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {_OVERFLOWS}, not {overflow!r}")
        if not 0 <= min_workers <= max_workers or max_workers < 1:
            raise ValueError(
                f"need 0 <= min_workers <= max_workers >= 1, got {min_workers}, {max_workers}"
            )
        if max_queue < 1 or max_spool < 1:
            raise ValueError("max_queue and max_spool must be >= 1")
        if not spool_window > 0 or not idle_timeout > 0 or not inline_timeout > 0:
            raise ValueError("spool_window, idle_timeout and inline_timeout must be > 0 seconds")
        self._transport = transport
        self._min_workers = min_workers
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._retry = retry or Retry()
        self._spool_path = spool
        self._max_spool = max_spool
        self._spool_window = spool_window
        self._spool_durability = spool_durability
        self._idle_timeout = idle_timeout
        self._grow_depth = transport.max_batch_items if grow_depth is None else grow_depth
        self._grow_age = grow_age
        self._breaker_threshold = breaker_threshold
        self._breaker_cooldown = breaker_cooldown
        self._inline_timeout = inline_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._name = name
        self._closed = False
        self._fork_locks: dict[int, threading.Lock] = {}  # see _after_fork_without_hooks
        self._fork_gate = lifecycle.ForkGate()
        self._gate = self._fork_gate.cell  # 0: take the rare path (not started, forked, closed)
        self._setup(recover=True)
        lifecycle.join(self)
        if self._spool is not None and self._spool.leftovers:
            self._ensure_started()  # an earlier process left items: send them now

    def _setup(self, *, recover: bool, threads: bool = True) -> None:
        """Everything a process owns: made at construction and again in a forked child.
        ``threads`` False: this process must not start threads (inline mode)."""
        self._log = RateLimitedLog(log)  # its lock may have been held at the fork
        self._prefix = f"{os.getpid():x}-{random.getrandbits(48):012x}-"
        capacity = _power_of_two(self._max_queue)
        self._ring: RingQueue[_Slot] = RingQueue(_Slot, capacity)
        self._pub = MPSequence(capacity)
        self._sub = MCSequence(capacity)
        self._stage: SCSequence | None = None
        self._spool: Spool | None = None
        if self._spool_path is not None:
            self._spool = Spool(
                self._spool_path, recover=recover, durability=self._spool_durability
            )
            self._stage = SCSequence()
            self._pub.then(self._stage).then(self._sub).then(self._pub)
        else:
            self._pub.then(self._sub).then(self._pub)
        self._books = Books()
        if self._spool is not None and self._spool.leftovers:
            self._books.recover(self._spool.leftovers)
        self._breaker = CircuitBreaker(
            self._clock,
            threshold=self._breaker_threshold,
            cooldown=self._breaker_cooldown,
            max_cooldown=max(self._breaker_cooldown, self._retry.maximum),
        )
        self._ready: deque[_Envelope] = deque()  # due retries and carried-over items
        self._retry_heap: list[tuple[float, int, list[_Envelope]]] = []
        self._retry_lock = threading.Lock()
        self._retrying = 0
        self._serial = itertools.count()
        self._pool = Pool(self._worker_main, self._min_workers, self._max_workers, self._name)
        self._start_lock = threading.Lock()
        self._started = False
        self._threads_ok = threads  # False after a fork that ran no Python hook
        self._inline_lock = threading.Lock()  # one inline round at a time; never waited for
        self._inline_due = -1e18  # clock time of the next inline round (the first call: now)
        self._inline_batch = min(self._transport.max_batch_items, self._max_queue)
        self._stop = False
        self._exiting = False
        self._wakeup = threading.Event()  # the supervisor's
        self._supervisor: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._writer_wakeup = threading.Event()
        self._last_commit = -1e18
        self._supervisor_passes = 0
        self._pass_cond = threading.Condition(threading.Lock())
        self._gate[0] = 0
        # Last: another thread of a child forked without hooks that sees this pid
        # finds everything above already made for this process.
        self._pid = os.getpid()

    # -- submitting: the hot path -------------------------------------------------------

    def submit(self, item: object) -> bool:
        """Queue ``item`` for delivery; True if accepted, False if refused (counted).

        Never blocks unless ``overflow="block"``. Safe from any thread and from a
        coroutine. ``item`` must be JSON-serialisable; it is encoded by a worker (or
        the spool writer), and counted as dropped (``"invalid"``) if it cannot be.
        """
        if not self._gate[0]:
            return self._submit_rare(item)
        pub = self._pub
        if pub.current() - self._sub.current() < self._max_queue:
            cursor = pub.next()
            if cursor >= 0:
                slot = self._ring.get(cursor)
                slot.item = item
                slot.t = self._clock()
                slot.state = _FRESH
                pub.done(cursor)
                return True
        return self._submit_full(item)

    def _submit_rare(self, item: object) -> bool:
        """First call, first call in a forked child, after close(), every call in
        inline mode."""
        if self._pid != os.getpid():
            self._after_fork_without_hooks()
        if self._closed:
            self._books.refuse("closed")
            return False
        if not self._started:  # once True it stays so in this process: no lock needed
            self._ensure_started()
        if self._gate[0]:
            return self.submit(item)
        if not self._threads_ok:
            return self._submit_inline(item)
        return self._claim_and_fill(item)  # could not start (exit in progress): queue anyway

    # -- inline mode: no threads in this process ---------------------------------------

    def _submit_inline(self, item: object) -> bool:
        """Queue ``item``, and do at most one round of the workers' work (see
        :meth:`_inline_round`): after queueing, so that the item itself may leave in
        this call, or before, when the queue is full, to make room for it."""
        full = self._pub.current() - self._sub.current() >= self._max_queue
        if full:
            self._inline_round()
        accepted = self._claim_and_fill(item)
        if not full:
            self._inline_round()
        return accepted

    def _inline_round(self, *, force: bool = False, deadline: float | None = None) -> bool:
        """The workers' and the spool writer's work, once, on the caller's thread.

        Runs when ``force``, when ``_INLINE_TICK`` clock seconds have passed since the
        last round, or when a full batch waits and the breaker would let it go. It
        commits the spool's window, moves due retries (a retry not yet due is not
        waited for) and, if the breaker permits, sends one batch, the request capped at
        ``inline_timeout`` (or ``deadline``, if sooner). A round in progress on another
        thread is not waited for. True if a batch was sent.
        """
        now = self._clock()
        if not force and now < self._inline_due:
            depth = self._pub.current() - self._sub.current() + len(self._ready)
            if depth < self._inline_batch or self._breaker.blocked():
                return False
        if not self._inline_lock.acquire(blocking=False):
            return False
        try:
            self._inline_due = now + _INLINE_TICK
            if self._stage is not None:
                self._spool_cycle()
            self._move_due_retries()
            permit = self._breaker.permit()
            if permit == WAIT:
                return False
            batch = self._take(None)
            if not batch:
                if permit == PROBE:
                    self._breaker.unused_probe()
                return False
            limit = time.monotonic() + self._inline_timeout
            self._send(batch, permit == PROBE, limit if deadline is None else min(limit, deadline))
            return True
        except Exception as error:  # submit() must not raise for the delivery's sake
            self._log.warning(
                "inline_error", f"conveyor: an inline delivery round failed: {error!r}"
            )
            return False
        finally:
            self._inline_lock.release()

    def _claim_and_fill(self, item: object) -> bool:
        cursor = -2
        while cursor == -2:
            if self._pub.current() - self._sub.current() >= self._max_queue:
                return self._submit_full(item)
            cursor = self._pub.next()
        if cursor < 0:
            return self._submit_full(item)
        self._fill(cursor, item)
        return True

    def _fill(self, cursor: int, item: object) -> None:
        slot = self._ring.get(cursor)
        slot.item = item
        slot.t = self._clock()
        slot.state = _FRESH
        self._pub.done(cursor)

    def _submit_full(self, item: object) -> bool:
        """The queue is at ``max_queue`` (or another producer won a race: -2)."""
        pub = self._pub
        for _ in range(8):  # lost races only; a full queue leaves at once
            if pub.current() - self._sub.current() < self._max_queue:
                cursor = pub.next()
                if cursor >= 0:
                    self._fill(cursor, item)
                    return True
                if cursor == -2:
                    _sched_yield()
                    continue
            break
        if self._overflow == "drop_oldest" and self._evict_oldest():
            return self._claim_and_fill(item)
        if self._overflow == "block":
            return self._block(item)
        self._books.refuse("queue_full")
        self._log.warning(
            "queue_full", f"conveyor dropped an item: queue full ({self._max_queue} items)"
        )
        return False

    def _evict_oldest(self) -> bool:
        """Take the oldest item a worker could take, and drop it to make room."""
        sub = self._sub
        cursor = -2
        for _ in range(64):
            cursor = sub.next()
            if cursor != -2:
                break
            _sched_yield()
        if cursor < 0:
            return False  # nothing released (a spool stage holds everything)
        slot = self._ring.get(cursor)
        state, row = slot.state, slot.row
        slot.item = slot.body = None
        sub.done(cursor)
        if state != _DEAD:
            self._books.resolve((cursor,), "dropped", "queue_evicted")
            if self._spool is not None and state == _SPOOLED:
                self._spool.discard((row,))
        self._log.warning(
            "queue_evicted",
            f"conveyor dropped the oldest item: queue full ({self._max_queue} items)",
        )
        return True

    def _block(self, item: object) -> bool:
        if not self._threads_ok:
            return self._block_inline(item)
        pub, sub, limit = self._pub, self._sub, self._max_queue

        def poll() -> int:
            if self._closed:
                return _WAKE
            if pub.current() - sub.current() >= limit:
                return -1
            return pub.next()

        try:
            cursor = pub.wait_strategy.wait_for(poll, self._block_timeout, "submit: queue full")
        except (RingTimeoutError, AlertedError):
            cursor = -1
        if cursor == _WAKE or cursor < 0:
            reason = "closed" if self._closed else "block_timeout"
            self._books.refuse(reason)
            self._log.warning(reason, f"conveyor dropped an item: {reason}")
            return False
        self._fill(cursor, item)
        return True

    def _block_inline(self, item: object) -> bool:
        """``overflow="block"`` in inline mode: no worker will make room, so the caller
        spends its ``block_timeout`` doing rounds itself (each request capped by what
        is left of it), pausing only while the breaker says wait."""
        deadline = time.monotonic() + self._block_timeout
        while not self._closed:
            if self._pub.current() - self._sub.current() < self._max_queue:
                cursor = self._pub.next()
                if cursor >= 0:
                    self._fill(cursor, item)
                    return True
                if cursor == -2:
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._inline_round(force=True, deadline=deadline):
                pause = self._breaker.wait_time()
                self._breaker.wait(min(remaining, max(0.001, min(pause, 0.05))))
        reason = "closed" if self._closed else "block_timeout"
        self._books.refuse(reason)
        self._log.warning(reason, f"conveyor dropped an item: {reason}")
        return False

    # -- starting -----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._started = True
            if self._threads_ok and not self._exiting and self._start_threads():
                self._gate[0] = 1

    def _start_threads(self) -> bool:
        try:
            if self._stage is not None:
                self._writer = threading.Thread(
                    target=self._writer_main, name=f"{self._name}-spool", daemon=True
                )
                self._writer.start()
            self._supervisor = threading.Thread(
                target=self._supervisor_main, name=f"{self._name}-supervisor", daemon=True
            )
            self._supervisor.start()
        except RuntimeError:  # interpreter exit (3.12+): the exit flush will do the work
            return False
        for _ in range(max(1, self._min_workers)):
            self._pool.spawn()
        return True

    # -- the workers --------------------------------------------------------------------

    def _worker_main(self) -> bool:
        """A worker's life; True if it left because it was idle (the pool shrinks)."""
        while not self._stop:
            if not self._work_once(self._idle_timeout) and self._pool.try_retire():
                return True
        return False

    def _poll(self) -> int:
        if self._ready or self._stop:
            return _WAKE
        return self._sub.next()

    def _work_once(self, idle: float) -> bool:  # noqa: PLR0911
        """Send one batch, or wait for one; False if nothing came for ``idle`` seconds."""
        permit = self._breaker.permit()
        if permit == WAIT:
            pause = self._breaker.wait_time()  # 0: a probe is out; its end wakes us
            wait = min(idle, pause, 1.0) if pause > 0 else min(idle, 1.0)
            self._breaker.wait(wait)
            return wait < idle
        batch = self._take(None)
        if not batch:
            if permit == PROBE:
                self._breaker.unused_probe()
            try:
                cursor = self._sub.wait_strategy.wait_for(self._poll, idle, "a worker: idle")
            except RingTimeoutError:
                return False
            except AlertedError:
                return True
            if cursor == _WAKE:
                return True
            batch = self._take(cursor)
            if not batch:
                return True
            permit = self._breaker.permit()
            if permit == WAIT:  # the breaker opened while this worker slept
                self._ready.extendleft(reversed(batch))
                return True
        self._pool.sending(1)
        try:
            self._send(batch, permit == PROBE)
        finally:
            self._pool.sending(-1)
        return True

    def _take(self, first: int | None) -> list[_Envelope]:
        """A batch: due retries first, then the ring; bounded by count and bytes."""
        max_items = self._transport.max_batch_items
        max_bytes = self._transport.max_batch_bytes
        batch: list[_Envelope] = []
        size = 2
        now = self._clock()
        ready = self._ready
        while ready and len(batch) < max_items and first is None:
            try:
                envelope = ready.popleft()
            except IndexError:
                break
            if envelope.first >= 0 and now - envelope.first > self._retry.deadline:
                self._finish((envelope,), "dropped", "retry_deadline")
                continue
            if batch and size + len(envelope.body) + 1 > max_bytes:
                ready.appendleft(envelope)
                return batch
            batch.append(envelope)
            size += len(envelope.body) + 1
        sub = self._sub
        cursor = first
        races = 0
        while len(batch) < max_items:
            if cursor is None:
                cursor = sub.next()
                if cursor == -2:
                    races += 1
                    if races > 16:
                        break
                    _sched_yield()
                    cursor = None
                    continue
                if cursor < 0:
                    break
            taken = self._envelope(cursor)
            cursor = None
            if taken is None:
                continue
            if batch and size + len(taken.body) + 1 > max_bytes:
                ready.appendleft(taken)  # the next batch starts with it
                break
            batch.append(taken)
            size += len(taken.body) + 1
        return batch

    def _envelope(self, cursor: int) -> _Envelope | None:
        """Read the slot at ``cursor`` (claimed), release it, encode its item."""
        slot = self._ring.get(cursor)
        item, state, key, body, row = slot.item, slot.state, slot.key, slot.body, slot.row
        slot.item = slot.body = None
        self._sub.done(cursor)
        if state == _DEAD:
            return None  # resolved by the spool writer already
        if body is None:
            key = self._prefix + format(cursor, "x")
            try:
                body = self._transport.encode(key, item)
            except Exception as error:
                self._books.resolve((cursor,), "dropped", "invalid")
                self._log.warning(
                    "invalid", f"conveyor dropped an item it cannot encode: {error!r}"
                )
                return None
        if len(body) + 2 > self._transport.max_batch_bytes:
            self._books.resolve((cursor,), "dropped", "too_large")
            if row and self._spool is not None:
                self._spool.discard((row,))
            self._log.warning("too_large", f"conveyor dropped an item of {len(body)} bytes")
            return None
        return _Envelope(key, body, cursor, row)

    def _send(self, batch: list[_Envelope], probe: bool, deadline: float | None = None) -> None:
        now = self._clock()
        for envelope in batch:
            if envelope.first < 0:
                envelope.first = now
            envelope.attempts += 1
        try:
            encoded = [e.body for e in batch]
            if deadline is None:
                outcome: Outcome = self._transport.send(encoded)
            else:
                outcome = self._transport.send(encoded, max(0.001, deadline - time.monotonic()))
            status, reason, retry_after = outcome.status, outcome.reason, outcome.retry_after
        except Exception as error:  # a transport must not raise; survive one that does
            status, reason, retry_after = None, type(error).__name__, None
        ok = status is not None and 200 <= status < 300
        delay = None
        if ok or not is_retryable(status):
            self._breaker.succeeded()  # it answered: the endpoint is up
        else:
            delay = parse_retry_after(retry_after, self._wall_clock())
            if status == 429:  # an order to slow down, not a failure of the endpoint
                self._breaker.hold(self._retry.backoff(1) if delay is None else delay)
            else:
                self._breaker.failed()
                if delay is not None:
                    self._breaker.hold(delay)
        self._books.request(None if ok else reason)
        if ok:
            self._finish(batch, "delivered")
            return
        if not is_retryable(status):
            self._finish(batch, "rejected", reason)
            self._log.warning(
                reason, f"{self._transport.url} rejected {len(batch)} item(s): {reason}"
            )
            return
        if delay is None:
            delay = self._retry.backoff(max(e.attempts for e in batch))
        due = now + delay
        keep: list[_Envelope] = []
        expired: list[_Envelope] = []
        attempts = self._retry.attempts
        for envelope in batch:
            if due - envelope.first > self._retry.deadline or (
                attempts is not None and envelope.attempts >= attempts
            ):
                expired.append(envelope)
            else:
                keep.append(envelope)
        if expired:
            self._finish(expired, "dropped", "retry_deadline")
            self._log.warning(
                "retry_deadline",
                f"conveyor dropped {len(expired)} item(s) after retrying "
                f"{self._transport.url}: {reason}",
            )
        if keep:
            with self._retry_lock:
                heapq.heappush(self._retry_heap, (due, next(self._serial), keep))
                self._retrying += len(keep)
            self._wakeup.set()
        if probe:
            log.debug("conveyor: probe of %s failed (%s)", self._transport.url, reason)

    def _finish(self, envelopes: Any, outcome: str, reason: str = "") -> None:
        self._books.resolve((e.seq for e in envelopes), outcome, reason)
        if self._spool is not None:
            self._spool.discard(e.row for e in envelopes)

    # -- the supervisor: retries and the size of the pool --------------------------------

    def _supervisor_main(self) -> None:
        while not self._stop:
            try:
                timeout = self._supervise()
            except Exception:
                log.exception("conveyor dispatcher supervisor: unexpected error (it keeps running)")
                timeout = 1.0
            with self._pass_cond:
                self._supervisor_passes += 1
                self._pass_cond.notify_all()
            self._wakeup.wait(timeout)
            self._wakeup.clear()

    def _supervise(self) -> float:
        """One pass; returns how long it may sleep (real seconds)."""
        now = self._clock()
        due: list[_Envelope] = []
        next_due = None
        with self._retry_lock:
            heap = self._retry_heap
            while heap and heap[0][0] <= now:
                due.extend(heapq.heappop(heap)[2])
            self._retrying -= len(due)
            if heap:
                next_due = heap[0][0] - now
        if due:
            self._ready.extend(due)
            self._sub.wait_strategy.signal()
            self._breaker.wake()
        blocked = self._breaker.blocked()
        depth = self._pub.current() - self._sub.current() + len(self._ready)
        if depth > 0 and not blocked and not self._exiting and self._pool.idle() == 0:
            oldest = self._sub.current() + 1
            age = now - self._ring.get(oldest).t if self._pub.current() >= oldest else 0.0
            if depth > self._grow_depth or age > self._grow_age:
                self._pool.spawn()
        if self._pool.size < self._min_workers and not self._exiting:
            self._pool.spawn()
        if blocked:
            timeout = min(1.0, max(0.01, self._breaker.wait_time()))
        elif depth > 0 or self._pool.busy:
            timeout = 0.05
        else:
            timeout = 1.0
        if next_due is not None:
            timeout = min(timeout, max(0.001, next_due))
        return timeout

    def _supervisor_pass(self, timeout: float = 5.0) -> bool:
        """Wake the supervisor and wait until it has made a full pass (tests)."""
        with self._pass_cond:
            target = self._supervisor_passes + 2
            self._wakeup.set()
            self._breaker.wake()
            return self._pass_cond.wait_for(lambda: self._supervisor_passes >= target, timeout)

    # -- the spool writer ---------------------------------------------------------------

    def _writer_main(self) -> None:
        stage = self._stage
        assert stage is not None

        def poll() -> int:
            if self._stop or (self._spool is not None and self._spool.finished):
                return _WAKE
            return stage.next()

        while True:
            with contextlib.suppress(RingTimeoutError, AlertedError):
                stage.wait_strategy.wait_for(poll, 0.5, "spool writer: idle")
            wait = self._last_commit + self._spool_window - self._clock()
            if wait > 0 and not self._stop:
                self._writer_wakeup.wait(min(wait, self._spool_window))
            try:
                self._spool_cycle()
            except Exception:
                log.exception("conveyor spool writer: unexpected error (it keeps running)")
                time.sleep(self._spool_window)
            if self._stop:
                with contextlib.suppress(Exception):
                    self._spool_cycle()
                return

    def _spool_cycle(self) -> int:
        """Commit what the stage holds, release it to the workers, delete what was
        delivered, load leftovers; returns how many items were released."""
        spool, stage = self._spool, self._stage
        if spool is None or stage is None:
            return 0
        with spool.lock:
            self._last_commit = self._clock()
            first = stage.next()
            hi = stage.available() if first >= 0 else first
            room = self._max_spool - spool.rows
            rows: list[tuple[str, bytes]] = []
            slots: list[_Slot] = []
            full: list[int] = []
            last = first - 1
            for cursor in range(first, hi):
                slot = self._ring.get(cursor)
                if room <= 0 and self._overflow == "drop_oldest":
                    evicted = spool.evict_leftovers(64)
                    if evicted:
                        room += evicted
                        self._books.resolve([-1] * evicted, "dropped", "spool_evicted")
                if room <= 0:
                    if self._overflow == "block":
                        break  # wait for deliveries to make room (producers block on the ring)
                    slot.state = _DEAD
                    slot.item = None
                    full.append(cursor)
                    last = cursor
                    continue
                key = self._prefix + format(cursor, "x")
                try:
                    body = self._transport.encode(key, slot.item)
                except Exception as error:
                    slot.state = _DEAD
                    slot.item = None
                    self._books.resolve((cursor,), "dropped", "invalid")
                    self._log.warning(
                        "invalid", f"conveyor dropped an item it cannot encode: {error!r}"
                    )
                    last = cursor
                    continue
                slot.key, slot.body, slot.item = key, body, None
                rows.append((key, body))
                slots.append(slot)
                room -= 1
                last = cursor
            ids = spool.commit(rows)
            for slot, row in zip(slots, ids, strict=True):
                slot.row = row
                slot.state = _SPOOLED
            if full:
                self._books.resolve(full, "dropped", "spool_full")
                self._log.warning("spool_full", f"conveyor dropped {len(full)} item(s): spool full")
            if last >= first >= 0:
                stage.done(last)
            released = max(0, last - first + 1) if first >= 0 else 0
            if spool.leftovers_unloaded and len(self._ready) < 4 * self._transport.max_batch_items:
                loaded = spool.load_leftovers(4 * self._transport.max_batch_items)
                base = -1 - (spool.leftovers - spool.leftovers_unloaded)
                self._ready.extend(
                    _Envelope(key, body, base - i, row) for i, (row, key, body) in enumerate(loaded)
                )
                if loaded:
                    self._sub.wait_strategy.signal()
            return released

    # -- flush, close, statistics -------------------------------------------------------

    def _flush_waiter(self) -> Waiter:
        books = self._books
        leftovers = self._spool.leftovers if self._spool is not None else 0
        with books.lock:
            return books.waiter(self._pub.current(), leftovers)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every item submitted before this call is delivered, rejected or
        dropped (with a spool: and every left-over of an earlier process). True if so,
        False if ``timeout`` seconds passed first. Items waiting for a retry keep their
        back-off: flush does not hammer a failing endpoint."""
        if self._pid != os.getpid():
            self._after_fork_without_hooks()
        waiter = self._flush_waiter()
        if waiter.event.is_set():
            ok = True
        else:
            if not self._closed:
                self._ensure_started()
            self._wakeup.set()
            if not self._gate[0] and not self._closed:
                limit = 1e9 if timeout is None else timeout
                ok = self._drain_here(waiter, time.monotonic() + limit)
            else:
                ok = waiter.event.wait(timeout)
        self._books.forget(waiter)
        if ok and self._spool is not None and not self._closed:
            self._sync_spool(timeout)
        return bool(ok)

    def _sync_spool(self, timeout: float | None) -> None:
        """Let the writer delete what was just delivered (so a restart does not resend)."""
        if self._writer is not None and self._writer.is_alive():
            self._writer_wakeup.set()
            self._stage_signal()
            deadline = time.monotonic() + (10.0 if timeout is None else timeout)
            spool = self._spool
            while spool is not None and spool.finished and time.monotonic() < deadline:
                with spool.lock:  # the writer's cycle holds it; wait our turn, then check
                    pass
                self._writer_wakeup.set()
                self._stage_signal()
                time.sleep(0.001)
        else:
            with contextlib.suppress(Exception):
                self._spool_cycle()

    def _stage_signal(self) -> None:
        if self._stage is not None:
            self._stage.wait_strategy.signal()

    def _drain_here(self, waiter: Waiter, deadline: float) -> bool:
        """Do the workers' (and the spool writer's) work on this thread until
        ``waiter`` is released or ``deadline``: at exit, or where threads cannot run."""
        while not waiter.event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._stage is not None and not (self._writer and self._writer.is_alive()):
                with contextlib.suppress(Exception):
                    self._spool_cycle()
            with contextlib.suppress(Exception):
                self._move_due_retries()
            permit = self._breaker.permit()
            batch = self._take(None) if permit != WAIT else []
            if batch:
                self._send(batch, permit == PROBE, deadline)
                continue
            if permit == PROBE:
                self._breaker.unused_probe()
            waiter.event.wait(min(0.01, remaining))
        return waiter.event.is_set()

    def _move_due_retries(self) -> None:
        now = self._clock()
        due: list[_Envelope] = []
        with self._retry_lock:
            heap = self._retry_heap
            while heap and heap[0][0] <= now:
                due.extend(heapq.heappop(heap)[2])
            self._retrying -= len(due)
        self._ready.extend(due)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush within ``timeout``, stop the threads and close the transport. Items
        still held are dropped (reason ``"closed"``), or, with a spool, stay on disk
        for the next process. Later ``submit()`` calls return False (``"closed"``).
        Returns the flush's result. Idempotent."""
        if self._closed:
            return True
        deadline = time.monotonic() + (10.0 if timeout is None else timeout)
        ok = self.flush(timeout)
        with self._start_lock:
            self._closed = True
            self._gate[0] = 0
        self._stop = True
        self._pub.wait_strategy.alert()  # producers blocked on a full queue give up
        self._sub.wait_strategy.alert()
        self._breaker.wake()
        self._wakeup.set()
        self._writer_wakeup.set()
        self._stage_signal()
        remaining = max(0.0, deadline - time.monotonic())
        self._pool.join(remaining)
        for thread in (self._supervisor, self._writer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._release_leftovers()
        if self._spool is not None:
            with self._spool.lock:
                self._spool.close()
        self._transport.close()
        return ok

    def _release_leftovers(self) -> None:
        """After close: what no worker will send is dropped (without a spool) or left
        on disk for the next process (committed items, with a spool)."""
        spooled = self._spool is not None
        gone: list[int] = []
        sub = self._sub
        while True:
            cursor = sub.next()
            if cursor == -2:
                continue
            if cursor < 0:
                break
            slot = self._ring.get(cursor)
            state = slot.state
            slot.item = slot.body = None
            sub.done(cursor)
            if state == _FRESH or (state == _SPOOLED and not spooled):
                gone.append(cursor)
        if self._stage is not None:  # accepted but never committed (the writer is gone)
            first = self._stage.next()
            if first >= 0:
                last = self._stage.available() - 1
                gone.extend(range(first, last + 1))
                self._stage.done(last)
        if not spooled:
            with self._retry_lock:
                waiting = [e for _, _, batch in self._retry_heap for e in batch]
                self._retry_heap.clear()
                self._retrying = 0
            gone.extend(e.seq for e in waiting)
            while self._ready:
                gone.append(self._ready.popleft().seq)
        if gone:
            self._books.resolve(gone, "dropped", "closed")

    async def aflush(self, timeout: float | None = 10.0) -> bool:
        """:meth:`flush` for coroutines: the event loop keeps running meanwhile."""
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(None, self.flush, timeout))

    async def aclose(self, timeout: float | None = 10.0) -> bool:
        """:meth:`close` for coroutines: the event loop keeps running meanwhile."""
        loop = asyncio.get_running_loop()
        return bool(await loop.run_in_executor(None, self.close, timeout))

    def statistics(self) -> DeliveryStatistics:
        """A snapshot of the books (see :class:`DeliveryStatistics`)."""
        if self._pid != os.getpid():
            self._after_fork_without_hooks()  # not the parent's books
        books = self._books
        spool = self._spool
        with books.lock:
            accepted = self._pub.current() + 1
            refused = sum(books.refused.values())
            dropped = books.dropped + books.refused
            submitted = accepted + refused
            pending = accepted + books.recovered - books.resolved
            snapshot = (books.delivered, dict(books.rejected), dict(dropped), books.requests)
            failures = dict(books.request_failures)
        delivered, rejected, dropped_map, requests = snapshot
        for reason in ("queue_full", "queue_evicted", "retry_deadline", "closed"):
            dropped_map.setdefault(reason, 0)
        return DeliveryStatistics(
            submitted=submitted,
            recovered=books.recovered,
            delivered=delivered,
            rejected=rejected,
            dropped=dropped_map,
            pending=pending,
            queue_depth=max(0, self._pub.current() - self._sub.current()),
            queue_capacity=self._max_queue,
            retrying=self._retrying,
            workers=self._pool.size,
            workers_peak=self._pool.peak,
            requests=requests,
            request_failures=failures,
            breaker=self._breaker.state,
            breaker_opened=self._breaker.opened,
            spooled=spool.committed if spool is not None else 0,
            spool_rows=spool.rows if spool is not None else 0,
            destination=self._transport.url,
            inline=not self._threads_ok,
        )

    # -- fork and exit (called by conveyor.lifecycle) -----------------------------------

    def _lifecycle_after_fork(self, *, threads: bool = True) -> None:
        """In a forked child: the parent's queue, retries and spool rows stay the
        parent's; locks a parent thread held are replaced; no thread is started until
        the child submits; the spool gets a connection of the child's own."""
        reset = getattr(self._transport, "reset_after_fork", None)
        if reset is not None:
            reset()  # first: a thread that sees the new pid may send at once
        self._setup(recover=False, threads=threads)
        if threads:  # a Python fork hook runs on the child's only thread
            self._fork_locks = {}

    def _after_fork_without_hooks(self) -> None:
        """A fork made in C that ran no Python hook (uWSGI): CPython's thread state
        was not reset either, so this process never starts threads (inline mode:
        submit(), flush() and the exit flush do the work on the caller's thread).

        Several threads of the child may notice the fork at once: one resets, the
        others wait for it. ``dict.setdefault`` is atomic, so they all get the same
        lock, made in this process (a lock inherited from the parent may be held)."""
        pid = os.getpid()
        lock = self._fork_locks.setdefault(pid, threading.Lock())
        with lock:
            if self._pid != pid:
                self._lifecycle_after_fork(threads=False)
                self._fork_locks = {pid: lock}  # nothing inherited is ever looked up

    def _lifecycle_flush(self, deadline: float) -> None:
        """At exit or at the end of a worker process: deliver what is held by
        ``deadline``, on this thread too, starting no thread."""
        if self._pid != os.getpid():
            self._after_fork_without_hooks()
            return
        self._exiting = True
        if self._closed or not self._started:
            return
        waiter = self._flush_waiter()
        self._wakeup.set()
        self._drain_here(waiter, deadline)
        self._books.forget(waiter)
        if self._spool is not None:
            self._writer_wakeup.set()
            with contextlib.suppress(Exception):
                self._spool_cycle()  # commit the last window and delete what was delivered

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Dispatcher({self._transport.url!r})"


__all__ = ["Dispatcher", "Overflow"]
