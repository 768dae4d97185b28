"""A conveyor.ring pipeline you can watch, that checks its own books.

    python examples/ring_pipeline.py [--events N] [--capacity POWER_OF_2] [--workers N]

Two graphs, one after the other:

1. Multicast: ``pub -> FanOut(totals, auditor, [late joiner]) -> reclaimer -> pub``.
   Every subscriber sees every event; a third subscriber joins mid-stream and leaves
   again, and must see one contiguous run of the stream.
2. Worker pool: ``pub -> MCSequence(workers) -> pub``. Each event goes to exactly one
   worker; the pool balances itself.

At the end every count and sum is compared with what was published; the script exits
1 if any item was lost or duplicated. (This was ``conveyor demo`` before the demo became
the whole pipeline: it shows the ring on its own, without the client or the agent.)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conveyor.ring import (
    BlockingWait,
    FanOut,
    MCSequence,
    RingQueue,
    SCSequence,
    SPSequence,
)

_NAMES = ("orders.placed", "cart.viewed", "payment.failed", "search.query")


class _Event:
    """A ring slot: written in place by the producer, read in place by consumers."""

    __slots__ = ("cursor", "name", "value")

    def __init__(self) -> None:
        self.cursor = -1
        self.name = ""
        self.value = 0


@dataclass
class _Tally:
    label: str
    count: int = 0
    total: int = 0
    first: int = -1
    last: int = -1
    gaps: int = 0
    per_name: dict[str, int] = field(default_factory=dict)

    def see(self, event: _Event) -> None:
        if self.last >= 0 and event.cursor != self.last + 1:
            self.gaps += 1
        if self.first < 0:
            self.first = event.cursor
        self.last = event.cursor
        self.count += 1
        self.total += event.value
        self.per_name[event.name] = self.per_name.get(event.name, 0) + 1


def _consume(seq: SCSequence, ring: RingQueue[_Event], tally: _Tally, end: int) -> None:
    """Read batches until cursor ``end`` has been seen."""
    while tally.last < end:
        cursor = seq.next_blocking(timeout=30)
        hi = min(seq.available(), end + 1)
        for c in range(cursor, hi):
            event = ring.get(c)
            if event.cursor != c:
                raise AssertionError(f"{tally.label}: slot {c} holds {event.cursor}")
            tally.see(event)
        seq.done(hi - 1)


def _publish(pub: SPSequence, ring: RingQueue[_Event], events: int) -> int:
    """Publish ``events`` events in batches; return the sum of their values."""
    total = 0
    i = 0
    while i < events:
        cursor = pub.next_blocking(timeout=30)
        hi = min(pub.available(), cursor + events - i)
        for c in range(cursor, hi):
            event = ring.get(c)
            event.cursor = c
            event.name = _NAMES[c % len(_NAMES)]
            event.value = c % 7 + 1
            total += event.value
        pub.done(hi - 1)
        i += hi - cursor
    return total


class _Progress:
    """Redraws one status line while the pipeline runs (plain lines if not a tty)."""

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._stop = threading.Event()
        self._tty = sys.stdout.isatty()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)

    def __enter__(self) -> _Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        print(("\r" if self._tty else "") + self._render() + "\n", end="", flush=True)

    def _run(self) -> None:
        interval = 0.1 if self._tty else 0.5
        while not self._stop.wait(interval):
            text = self._render()
            print(("\r" + text) if self._tty else text + "\n", end="", flush=True)


def _multicast(events: int, capacity: int) -> list[str]:
    ring = RingQueue(_Event, capacity)
    pub = SPSequence(capacity, wait=BlockingWait())
    fan_out = FanOut()
    reclaimer = SCSequence()
    pub.then(fan_out).then(reclaimer).then(pub)
    end = events - 1

    totals = _Tally("totals")
    auditor = _Tally("auditor")
    late = _Tally("late joiner")
    reclaimed = _Tally("reclaimer")
    threads = [
        threading.Thread(
            target=_consume, args=(fan_out.add_and_get(SCSequence()), ring, tally, end)
        )
        for tally in (totals, auditor)
    ]
    threads.append(threading.Thread(target=_consume, args=(reclaimer, ring, reclaimed, end)))

    def late_joiner() -> None:
        # Join once a third of the stream is out, leave after another third.
        while pub.current() < events // 3:
            time.sleep(0.001)  # a demo's pacing, not synchronisation
        seq = fan_out.add_and_get(SCSequence())
        if seq.current() < end:
            _consume(seq, ring, late, min(end, seq.current() + events // 3))
        fan_out.remove(seq)

    threads.append(threading.Thread(target=late_joiner))

    def render() -> str:
        return (
            f"multicast  published {pub.current() + 1:>9,}  totals {totals.count:>9,}  "
            f"auditor {auditor.count:>9,}  late {late.count:>9,}  reclaimed {reclaimed.count:>9,}"
        )

    started = time.perf_counter()
    with _Progress(render):
        for thread in threads:
            thread.start()
        expected_total = _publish(pub, ring, events)
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - started

    problems: list[str] = []
    for tally in (totals, auditor, reclaimed):
        if (tally.count, tally.total, tally.gaps) != (events, expected_total, 0):
            problems.append(
                f"{tally.label}: saw {tally.count} events summing {tally.total} "
                f"with {tally.gaps} gaps; expected {events} summing {expected_total}"
            )
    if late.count and (late.gaps or late.count != late.last - late.first + 1):
        problems.append(f"late joiner: {late.count} events from {late.first} to {late.last}")
    print(
        f"  every subscriber saw all {events:,} events in order ({events / elapsed:,.0f}/s); "
        f"the late joiner saw cursors {late.first:,}..{late.last:,} with no gap"
    )
    return problems


def _worker_pool(events: int, capacity: int, workers: int) -> list[str]:
    ring = RingQueue(_Event, capacity)
    pub = SPSequence(capacity)
    pool = MCSequence(capacity)
    pub.then(pool).then(pub)
    tallies = [_Tally(f"worker {i}") for i in range(workers)]

    def work(tally: _Tally) -> None:
        while True:
            cursor = pool.next_blocking(timeout=30)
            event = ring.get(cursor)
            stop = event.cursor < 0
            if not stop:
                tally.count += 1
                tally.total += event.value
            pool.done(cursor)
            if stop:
                return

    threads = [threading.Thread(target=work, args=(tally,)) for tally in tallies]

    def render() -> str:
        shares = " ".join(f"{tally.count:>8,}" for tally in tallies)
        return f"worker pool published {pub.current() + 1:>9,}  per worker {shares}"

    started = time.perf_counter()
    with _Progress(render):
        for thread in threads:
            thread.start()
        expected_total = _publish(pub, ring, events)
        for _ in threads:  # one end-of-stream marker per worker
            cursor = pub.next_blocking(timeout=30)
            ring.get(cursor).cursor = -1
            pub.done(cursor)
        for thread in threads:
            thread.join()
    elapsed = time.perf_counter() - started

    count = sum(tally.count for tally in tallies)
    total = sum(tally.total for tally in tallies)
    print(f"  {workers} workers shared {count:,} events exactly once ({events / elapsed:,.0f}/s)")
    if (count, total) != (events, expected_total):
        return [f"worker pool: {count} events summing {total}; expected {events}"]
    return []


def run(events: int = 300_000, capacity: int = 1024, workers: int = 3) -> int:
    """Run both pipelines; return 0 if every item arrived exactly once, else 1."""
    print(f"conveyor.ring pipeline: {events:,} events per pipeline, ring of {capacity} slots\n")
    problems = _multicast(events, capacity) + _worker_pool(events, capacity, workers)
    if problems:
        print("\nLOST OR DUPLICATED DATA:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("\nnothing lost, nothing duplicated.")
    return 0


def _power_of_two(text: str) -> int:
    value = int(text)
    if value < 1 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two (e.g. 512, 1024)")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=_at_least(3), default=300_000, help="per pipeline")
    parser.add_argument(
        "--capacity", type=_power_of_two, default=1024, help="ring capacity (power of 2)"
    )
    parser.add_argument(
        "--workers", type=_at_least(1), default=3, help="threads in the worker pool"
    )
    args = parser.parse_args(argv)
    return run(events=args.events, capacity=args.capacity, workers=args.workers)


if __name__ == "__main__":
    sys.exit(main())
