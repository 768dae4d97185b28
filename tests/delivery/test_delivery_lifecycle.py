"""Fork, exit and SIGKILL: real processes, a real server, a real spool file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from delivery_support import Server, books_balance, serving

from conveyor import Dispatcher, HTTPTransport

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as s:
        yield s


def run_script(body: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / f"app_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)
def test_at_exit_a_full_queue_is_drained_within_the_deadline(
    server: Server, tmp_path: Path
) -> None:
    server.delay = 0.01
    process = run_script(
        """
        import sys, time
        from conveyor import Dispatcher, HTTPTransport
        from conveyor import lifecycle
        lifecycle.set_exit_timeout(20.0)
        t = HTTPTransport(sys.argv[1], max_batch_items=200)
        d = Dispatcher(t, max_queue=20_000, max_workers=4)
        for i in range(20_000):
            assert d.submit({"n": i})
        print("submitted", flush=True)
        # falls off the end: the exit flush must deliver everything, starting no thread
        """,
        tmp_path,
        server.url,
    )
    _, err = process.communicate(timeout=50)
    assert process.returncode == 0, err
    assert "RuntimeError" not in err, err
    assert sorted(x["n"] for x in server.data()) == list(range(20_000))


@pytest.mark.timeout(60)
def test_at_exit_the_deadline_bounds_the_wait(server: Server, tmp_path: Path) -> None:
    server.gate = threading.Event()  # the endpoint never answers
    process = run_script(
        """
        import sys, time
        from conveyor import Dispatcher, HTTPTransport, lifecycle
        lifecycle.set_exit_timeout(1.0)
        d = Dispatcher(HTTPTransport(sys.argv[1]), max_workers=1)
        for i in range(100):
            d.submit({"n": i})
        print(time.monotonic(), flush=True)
        """,
        tmp_path,
        server.url,
    )
    out, err = process.communicate(timeout=30)
    ended = time.monotonic()
    assert process.returncode == 0, err
    assert ended - float(out.split()[0]) < 6.0  # 1 s of exit flush, plus start-up slack


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_drops_the_parents_queue_and_sends_its_own(
    server: Server, tmp_path: Path
) -> None:
    server.gate = threading.Event()
    d = Dispatcher(
        HTTPTransport(server.url, max_batch_items=1), max_workers=1, spool=tmp_path / "s.db"
    )
    for i in range(10):
        d.submit({"who": "parent", "n": i})
    assert server.wait(lambda s: s.active == 1)  # a parent worker is inside a request
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read)
            stats = d.statistics()
            fresh = stats.submitted == 0 and stats.pending == 0 and stats.workers == 0
            separate = d._spool is not None and d._spool._db is None  # not the parent's connection
            server_gate_is_parents = True
            for i in range(5):
                d.submit({"who": "child", "n": i})
            flushed = d.flush(20.0)
            stats = d.statistics()
            report = {
                "fresh": fresh,
                "separate": separate,
                "flushed": flushed,
                "delivered": stats.delivered,
                "balance": books_balance(stats),
                "gate": server_gate_is_parents,
            }
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    # The child's requests wait on the server's gate too (it lives in this process):
    # release it once the child has started sending.
    assert server.wait(lambda s: s.requests >= 2, 20)
    server.gate.set()
    _, status = os.waitpid(pid, 0)
    report = json.loads(os.read(read, 65536).decode())
    os.close(read)
    assert status == 0
    assert report == {
        "fresh": True,
        "separate": True,
        "flushed": True,
        "delivered": 5,
        "balance": True,
        "gate": True,
    }
    assert d.flush(20.0)
    data = server.data()
    assert sorted(x["n"] for x in data if x["who"] == "parent") == list(range(10))
    assert sorted(x["n"] for x in data if x["who"] == "child") == list(range(5))
    assert d.statistics().delivered == 10
    d.close()


PRODUCER = """
import sys, time
from conveyor import Dispatcher, HTTPTransport, Retry
url, spool = sys.argv[1], sys.argv[2]
d = Dispatcher(HTTPTransport(url, max_batch_items=50), spool=spool, spool_window=0.02,
               max_workers=2, retry=Retry(initial=0.05, maximum=0.2))
i = 0
while True:
    d.submit({"n": i})
    i += 1
    if i % 200 == 0:
        print(d.statistics().spooled, flush=True)
        time.sleep(0.001)
"""

RESTART = """
import sys, json
from conveyor import Dispatcher, HTTPTransport
d = Dispatcher(HTTPTransport(sys.argv[1], max_batch_items=500), spool=sys.argv[2], max_workers=2)
ok = d.flush(30.0)
s = d.statistics()
d.close(10.0)
print(json.dumps({"ok": ok, "recovered": s.recovered, "delivered": s.delivered,
                  "pending": s.pending, "rows": d._spool.rows if d._spool else -1}))
"""


@pytest.mark.timeout(90)
def test_a_producer_killed_by_sigkill_loses_nothing_committed(
    server: Server, tmp_path: Path
) -> None:
    server.delay = 0.02  # slow enough that a backlog builds up in the spool
    spool = str(tmp_path / "spool.db")
    producer = run_script(PRODUCER, tmp_path, server.url, spool)
    assert producer.stdout is not None
    committed = 0
    for line in producer.stdout:
        committed = int(line)  # items 0..committed-1 are on disk (a lower bound)
        if committed >= 3000:
            break
    producer.send_signal(signal.SIGKILL)
    producer.wait(10)
    delivered_before = len(server.items)
    restart = run_script(RESTART, tmp_path, server.url, spool)
    out, err = restart.communicate(timeout=60)
    assert restart.returncode == 0, err
    report = json.loads(out)
    assert report["ok"] and report["pending"] == 0 and report["rows"] == 0, report
    assert report["recovered"] > 0 and report["delivered"] == report["recovered"]
    keys_by_item: dict[int, set[str]] = defaultdict(set)
    for entry in server.items:
        keys_by_item[entry["data"]["n"]].add(entry["id"])
    missing = [n for n in range(committed) if n not in keys_by_item]
    assert not missing, f"{len(missing)} committed items never delivered, e.g. {missing[:5]}"
    # Duplicates (delivered, killed before the delete was committed) carry one key.
    assert all(len(keys) == 1 for keys in keys_by_item.values())
    assert len(server.items) > delivered_before


@pytest.mark.timeout(60)
def test_the_spool_is_bounded(server: Server, tmp_path: Path) -> None:
    server.gate = threading.Event()
    d = Dispatcher(
        HTTPTransport(server.url, max_batch_items=1),
        max_workers=1,
        overflow="drop_newest",
        spool=tmp_path / "b.db",
        max_spool=5,
        spool_window=0.01,
    )
    for i in range(20):
        d.submit({"n": i})
    assert d._books.wait(lambda b: b.dropped["spool_full"] == 15, 10)
    stats = d.statistics()
    assert stats.spool_rows == 5 and books_balance(stats)
    server.gate.set()
    assert d.flush(10.0)
    stats = d.statistics()
    assert stats.delivered == 5 and stats.spool_rows == 0 and books_balance(stats)
    d.close()
