"""Inline mode: a dispatcher in a child forked in C without Python hooks (uWSGI without
``py-call-osafterfork``) starts no thread, and ``submit()`` delivers on a clock.

A fork made in C runs no Python hook, CPython's own included, so forking so while
other Python threads run can deadlock the child inside CPython whatever conveyor does.
Each test therefore runs a fresh, single-threaded interpreter that creates the
dispatcher (and does not use it: a uWSGI master that loads the app), forks in C with
``ctypes.PyDLL(None).fork`` (which keeps the GIL across the call, as a C server's fork
does), and reports what the child saw as JSON. The server is real, on loopback, in
this process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from delivery_support import Reply, Server, dead_url, serving

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Shared by every script: the raw fork, and the books of a dispatcher as a dict.
_PROLOGUE = """
import ctypes, json, os, sys, threading, time, traceback
from conveyor import Dispatcher, HTTPTransport, Retry

raw_fork = ctypes.PyDLL(None).fork


def books(d):
    s = d.statistics()
    return {
        "submitted": s.submitted, "delivered": s.delivered, "pending": s.pending,
        "dropped": dict(s.dropped), "dropped_total": s.dropped_total,
        "rejected_total": s.rejected_total, "recovered": s.recovered,
        "requests": s.requests, "request_failures": dict(s.request_failures),
        "workers": s.workers, "inline": s.inline, "threads": threading.active_count(),
    }


def in_child(body, exit_normally=False):
    # Run body() in a child forked in C; return its report. exit_normally: the child
    # ends through the interpreter's exit (atexit: conveyor's exit flush) instead of
    # os._exit (nothing flushed at the end).
    read, write = os.pipe()
    pid = raw_fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(body()).encode())
            os.close(write)
            code = 0
        except BaseException:
            traceback.print_exc()
        if exit_normally and code == 0:
            sys.exit(0)
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child failed: {status}"
    return json.loads(b"".join(chunks))
"""


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as s:
        yield s


def run_forking_script(body: str, tmp_path: Path, *args: str, timeout: float = 50) -> Any:
    """Run ``_PROLOGUE + body`` in a fresh interpreter; return what it printed (JSON)."""
    script = tmp_path / "cfork_dispatcher.py"
    script.write_text(_PROLOGUE + textwrap.dedent(body))
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: a hung child is killed with it
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"the script did not finish in {timeout} s: {err}")
    assert process.returncode == 0, err
    return json.loads(out)


def balanced(books: dict[str, Any]) -> bool:
    return bool(
        books["submitted"] + books["recovered"]
        == books["delivered"] + books["rejected_total"] + books["dropped_total"] + books["pending"]
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
def test_submit_delivers_on_a_clock_without_flush(
    server: Server, tmp_path: Path, spooled: bool
) -> None:
    """The clock is the dispatcher's injectable one: the test moves it past a tick."""
    report = run_forking_script(
        """
        now = [1000.0]
        d = Dispatcher(HTTPTransport(sys.argv[1]), clock=lambda: now[0],
                       spool=sys.argv[2] or None)

        def child():
            d.submit({"n": 0})  # the child's first call: a round at once
            first = books(d)
            for i in range(1, 10):  # within the same tick, fewer than a batch: queued
                d.submit({"n": i})
            within_tick = books(d)
            now[0] += 0.1
            d.submit({"n": 10})  # a tick later: this call sends all that waits
            return {"first": first, "within_tick": within_tick, "after_tick": books(d)}

        print(json.dumps(in_child(child)))  # the child ends with os._exit: no exit flush
        """,
        tmp_path,
        server.url,
        str(tmp_path / "child.db") if spooled else "",
    )
    first, within, after = report["first"], report["within_tick"], report["after_tick"]
    assert first["inline"] and first["workers"] == 0 and first["threads"] == 1, first
    assert (first["submitted"], first["delivered"], first["pending"]) == (1, 1, 0), first
    assert (within["submitted"], within["delivered"], within["pending"]) == (10, 1, 9), within
    assert within["requests"] == 1, within
    assert (after["submitted"], after["delivered"], after["pending"]) == (11, 11, 0), after
    assert after["requests"] == 2 and after["threads"] == 1, after
    assert all(balanced(b) for b in (first, within, after)), report
    assert sorted(x["n"] for x in server.data()) == list(range(11))  # each once


@pytest.mark.timeout(60)
def test_a_full_batch_leaves_at_once_and_the_rest_at_exit(server: Server, tmp_path: Path) -> None:
    report = run_forking_script(
        """
        d = Dispatcher(HTTPTransport(sys.argv[1], max_batch_items=50))

        def child():
            most_pending = 0
            for i in range(500):
                d.submit({"n": i})
                b = books(d)
                assert balanced(b), b
                most_pending = max(most_pending, b["pending"])
            return {"most_pending": most_pending, "end": books(d)}

        def balanced(b):
            return b["submitted"] == b["delivered"] + b["dropped_total"] + b["pending"]

        print(json.dumps(in_child(child, exit_normally=True)))
        """,
        tmp_path,
        server.url,
    )
    end = report["end"]
    # Every call that finds a batch of 50 waiting sends it: never a batch more held.
    assert report["most_pending"] < 50, report
    assert end["delivered"] > 450 and end["dropped_total"] == 0, end
    assert end["inline"] and end["threads"] == 1, end
    # What was still queued left with the child's exit flush (no flush() was called).
    assert sorted(x["n"] for x in server.data()) == list(range(500))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("endpoint", ["stuck", "refused"])
def test_a_slow_or_down_endpoint_does_not_hold_submit_past_inline_timeout(
    server: Server, tmp_path: Path, endpoint: str
) -> None:
    """``inline_timeout`` caps the one request a submit() may make; the breaker then
    stops the requests (a 60 s cool-down: no probe during the test)."""
    server.gate = threading.Event()  # a request waits for it: the endpoint never answers
    url = server.url if endpoint == "stuck" else dead_url()
    report = run_forking_script(
        """
        d = Dispatcher(HTTPTransport(sys.argv[1], read_timeout=30.0),
                       inline_timeout=0.3, breaker_threshold=3, breaker_cooldown=60.0)

        def child():
            took = []
            for i in range(20):
                started = time.monotonic()
                d.submit({"n": i})
                took.append(time.monotonic() - started)
            return {"took": took, "end": books(d)}

        print(json.dumps(in_child(child)))
        """,
        tmp_path,
        url,
    )
    took, end = report["took"], report["end"]
    assert max(took) < 0.3 + 0.7, took  # without the cap: the 30 s read timeout
    if endpoint == "stuck":  # each call outlasts a tick: a request each, until the
        assert end["requests"] == 3, end  # breaker opens (3 failures): no more requests
        assert sum(t > 0.2 for t in took) == 3, took
    else:  # refused at once: most calls come within a tick of the last round
        assert 1 <= end["requests"] <= 3, end
    assert end["submitted"] == 20 and end["delivered"] == 0, end
    assert end["dropped_total"] == 0 and balanced(end), end  # all still pending
    if endpoint == "stuck":
        assert server.requests == 3


@pytest.mark.timeout(60)
def test_a_retry_is_not_waited_for_and_goes_out_once_due(server: Server, tmp_path: Path) -> None:
    server.script = [Reply(503, {"Retry-After": "30"})]
    report = run_forking_script(
        """
        now = [1000.0]
        d = Dispatcher(HTTPTransport(sys.argv[1]), clock=lambda: now[0])

        def child():
            took = []
            d.submit({"n": 0})  # 503, Retry-After: 30 (clock seconds)
            for i in range(1, 20):  # every call is a tick later: a round, but nothing due
                now[0] += 0.5
                started = time.monotonic()
                d.submit({"n": i})
                took.append(time.monotonic() - started)
            held = books(d)
            now[0] += 30
            d.submit({"n": 20})  # the retry is due: it goes with everything queued
            return {"took": took, "held": held, "end": books(d)}

        print(json.dumps(in_child(child)))
        """,
        tmp_path,
        server.url,
    )
    held, end = report["held"], report["end"]
    assert held["requests"] == 1 and held["pending"] == 20 and balanced(held), held
    assert max(report["took"]) < 0.5, report["took"]  # no call waited for the retry
    assert end["requests"] == 2 and end["delivered"] == 21 and end["pending"] == 0, end
    assert sorted(x["n"] for x in server.data()) == list(range(21))


@pytest.mark.timeout(60)
def test_overflow_block_spends_block_timeout_at_most_and_counts_the_refusal(
    tmp_path: Path,
) -> None:
    """No worker will make room: a blocked submit() does rounds itself, then refuses."""
    report = run_forking_script(
        """
        d = Dispatcher(HTTPTransport(sys.argv[1]), max_queue=4, overflow="block",
                       block_timeout=0.2, breaker_threshold=2, breaker_cooldown=60.0)

        def child():
            took, accepted = [], []
            for i in range(12):
                started = time.monotonic()
                accepted.append(d.submit({"n": i}))
                took.append(time.monotonic() - started)
            return {"took": took, "accepted": accepted, "end": books(d)}

        print(json.dumps(in_child(child)))
        """,
        tmp_path,
        dead_url(),
    )
    took, accepted, end = report["took"], report["accepted"], report["end"]
    refused = accepted.count(False)
    assert refused >= 1 and end["dropped"]["block_timeout"] == refused, report
    assert all(t >= 0.2 for t, ok in zip(took, accepted, strict=True) if not ok), report
    assert max(took) < 0.2 + 0.8, took
    assert end["submitted"] == 12 and balanced(end), end
