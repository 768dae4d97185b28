"""Nothing lost at fork, at exit or at SIGTERM: real processes, real sockets."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Client
from conveyor.protocol import parse_packet
from conveyor.transport import Transport, TransportError, TransportStatistics, UDPTransport


class Receiver:
    """A UDP socket that sums counters by (name, tags)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"udp://127.0.0.1:{self.port}"
        self.counts: Counter[tuple[str, tuple[str, ...]]] = Counter()

    def take(self) -> Counter[tuple[str, tuple[str, ...]]]:
        """What is already in the socket buffer: callers rendez-vous first (a flush, a
        process that has exited)."""
        self.sock.setblocking(False)
        while True:
            try:
                packet = self.sock.recv(65536)
            except BlockingIOError:
                return self.counts
            for metric in parse_packet(packet).metrics:
                self.counts[(metric.name, metric.tags)] += int(sum(metric.values))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.sock.close()


def _run_script(
    body: str, receiver: Receiver, tmp_path: Path, **kwargs: object
) -> subprocess.Popen[str]:
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "CONVEYOR_URL": receiver.url}
    env.update({k: str(v) for k, v in kwargs.items()})
    return subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(60)
def test_a_script_that_falls_off_main_delivers_everything(
    receiver: Receiver, tmp_path: Path
) -> None:
    process = _run_script(
        """
        from conveyor import Client
        metrics = Client()
        for _ in range(100_000):
            metrics.increment("script.done")
        """,
        receiver,
        tmp_path,
    )
    _, err = process.communicate(timeout=50)
    assert process.returncode == 0, err
    assert receiver.take()[("script.done", ())] == 100_000


@pytest.mark.timeout(60)
def test_sigterm_with_the_handlers_installed_delivers_everything(
    receiver: Receiver, tmp_path: Path
) -> None:
    process = _run_script(
        """
        import threading
        import conveyor.lifecycle
        from conveyor import Client
        conveyor.lifecycle.install_signal_handlers()
        metrics = Client()
        for _ in range(100_000):
            metrics.increment("until.sigterm")
        print("recorded", flush=True)
        threading.Event().wait()  # a server's main loop
        """,
        receiver,
        tmp_path,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "recorded\n"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=50)
    assert process.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert receiver.take()[("until.sigterm", ())] == 100_000


@pytest.mark.timeout(60)
def test_an_existing_sigterm_handler_is_called_instead(receiver: Receiver, tmp_path: Path) -> None:
    process = _run_script(
        """
        import signal, sys, threading
        import conveyor.lifecycle
        from conveyor import Client
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())  # the server's own
        conveyor.lifecycle.install_signal_handlers()
        metrics = Client()
        metrics.increment("graceful")
        print("ready", flush=True)
        stop.wait()
        print("graceful shutdown", flush=True)
        """,
        receiver,
        tmp_path,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=50)
    assert process.returncode == 0, err
    assert out == "graceful shutdown\n"
    assert receiver.take()[("graceful", ())] == 1


@pytest.mark.timeout(60)
def test_exit_never_hangs_on_an_unreachable_destination(tmp_path: Path) -> None:
    # A listener that never accepts, with its backlog full: connects hang (SYNs go
    # unanswered), the worst kind of unreachable.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time
            from conveyor import Client
            metrics = Client(url="tcp://127.0.0.1:{port}")
            for i in range(10_000):
                metrics.increment("lost", tags=[f"i:{{i}}"])
            print(time.monotonic(), flush=True)
            """
        )
    )
    try:
        for deadline in (2.0, 0.5):
            env = {**os.environ, "CONVEYOR_EXIT_TIMEOUT": str(deadline)}
            process = subprocess.Popen(
                [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True
            )
            out, _ = process.communicate(timeout=30)
            ended = time.monotonic()
            exit_took = ended - float(out)
            assert process.returncode == 0
            assert exit_took < deadline + 1.0, (
                f"exit took {exit_took:.2f} s for a {deadline} s deadline"
            )
    finally:
        listener.close()
        for filler in fillers:
            filler.close()


class _StallInParent(Transport):
    """Blocks in ``send`` in the parent process until released; in a forked child it
    delivers through a real UDP transport."""

    def __init__(self, url: str, port: int) -> None:
        self._inner = UDPTransport("127.0.0.1", port)
        self._parent = os.getpid()
        self.stalled = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def max_packet_size(self) -> int:
        return self._inner.max_packet_size

    def send(self, packet: bytes) -> None:
        if os.getpid() == self._parent and not self.release.is_set():
            self.stalled.set()
            if not self.release.wait(30):
                raise TransportError("send", "stalled too long")
        self._inner.send(packet)

    def close(self) -> None:
        self.release.set()
        self._inner.close()

    def statistics(self) -> TransportStatistics:
        return self._inner.statistics()


@pytest.mark.timeout(60)
def test_fork_during_a_flush_neither_waits_nor_inherits_a_held_lock(receiver: Receiver) -> None:
    transport = _StallInParent(receiver.url, receiver.port)
    client = Client(transport=transport, flush_interval=3600)
    client.increment("parent.before.fork", 7)
    flusher = threading.Thread(target=client.flush, kwargs={"timeout": 30})
    flusher.start()
    assert transport.stalled.wait(10)  # the sender is inside send(), holding its locks
    client.increment("parent.pending", 3)  # queued behind the stuck flush
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        started = time.monotonic()
        pid = os.fork()
    if pid == 0:  # the child: must work, and must not send the parent's data again
        try:
            client.increment("child.recorded", 5)
            ok = client.flush(timeout=10)
        finally:
            os._exit(0 if ok else 1)
    fork_took = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert fork_took < 0.5  # the fork did not wait for the stuck sender
    transport.release.set()
    flusher.join(10)
    assert client.flush(timeout=10)
    counts = receiver.take()
    assert counts == {
        ("parent.before.fork", ()): 7,
        ("parent.pending", ()): 3,
        ("child.recorded", ()): 5,
    }
    client.close()


@pytest.mark.timeout(120)
def test_two_hundred_forks_while_four_threads_record(receiver: Receiver) -> None:
    client = Client(url=receiver.url)
    per_thread = 50_000
    go = threading.Barrier(5)

    def record() -> None:
        go.wait()
        for _ in range(per_thread):
            client.increment("parent.hits")

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    go.wait()
    children = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    for _ in range(10):
                        client.increment("child.hits")
                    code = 0 if client.flush(timeout=20) else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            children += 1
    for thread in threads:
        thread.join()
    assert client.flush(timeout=30)
    counts = receiver.take()
    assert counts[("parent.hits", ())] == 4 * per_thread
    assert counts[("child.hits", ())] == 10 * children == 2000
    stats = client.statistics()
    assert stats.dropped_total == 0 and stats.pending == 0
    client.close()


# A fork made in C runs no Python hook at all, CPython's own included: its GIL and
# threading state are not reset, so forking so while other Python threads run can
# deadlock the child inside CPython whatever conveyor does (uWSGI's py-call-osafterfork
# exists for that). These tests therefore fork in C from a fresh, single-threaded
# interpreter. PyDLL keeps the GIL across the call, as a C server's fork does.
_RAW_FORK = """
import ctypes, os, sys
raw_fork = ctypes.PyDLL(None).fork
"""


@pytest.mark.timeout(60)
def test_the_kernel_zeroes_the_fork_gate_in_a_child_forked_in_c(tmp_path: Path) -> None:
    script = tmp_path / "gate.py"
    script.write_text(
        _RAW_FORK
        + textwrap.dedent(
            """
            from conveyor.lifecycle import ForkGate
            gate = ForkGate()
            assert gate.wiped_by_kernel, "MADV_WIPEONFORK unavailable"
            gate.cell[0] = 12345
            pid = raw_fork()
            if pid == 0:
                os._exit(0 if gate.cell[0] == 0 else 3)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            assert gate.cell[0] == 12345  # the parent's page is untouched
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(60)
def test_a_fork_made_in_c_without_python_hooks_is_noticed_on_the_next_call(
    receiver: Receiver, tmp_path: Path
) -> None:
    script = tmp_path / "cfork.py"
    script.write_text(
        _RAW_FORK
        + textwrap.dedent(
            f"""
            from conveyor import Client
            client = Client(url="{receiver.url}", threaded=False, flush_interval=3600)
            client.increment("parent.pending", 4)  # held in the parent at the fork
            pid = raw_fork()
            if pid == 0:
                code = 1
                try:
                    client.increment("c.child", 6)
                    flushed = client.flush(timeout=10)
                    # CPython's threading state was not reset: no thread may start here.
                    no_thread = not client.statistics().sender_running
                    code = 0 if flushed and no_thread else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, status
            assert client.flush(timeout=10)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    counts = receiver.take()
    assert counts[("parent.pending", ())] == 4  # once: the child did not send it again
    assert counts[("c.child", ())] == 6


def _pool_task(n: int) -> int:
    _POOL_CLIENT.increment("pool.task", tags=[f"n:{n % 2}"])
    return n


_POOL_CLIENT: Client


@pytest.mark.timeout(60)
@pytest.mark.parametrize("maxtasksperchild", [None, 5])
def test_multiprocessing_workers_flush_before_os_exit(
    receiver: Receiver, maxtasksperchild: int | None
) -> None:
    global _POOL_CLIENT
    _POOL_CLIENT = Client(url=receiver.url, flush_interval=3600)
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with context.Pool(4, maxtasksperchild=maxtasksperchild) as pool:
            assert sum(pool.map(_pool_task, range(200), chunksize=1)) == sum(range(200))
            pool.close()
            pool.join()
    counts = receiver.take()
    assert counts[("pool.task", ("n:0",))] + counts[("pool.task", ("n:1",))] == 200
    _POOL_CLIENT.close()
