"""Real servers, real processes, real sockets: how many increments arrive.

Each scenario starts a real server (gunicorn, a Celery worker) or a plain script in a
subprocess, with the client chosen by name (see ``server_apps/srv_client.py``), drives
it from this process, ends it the way production ends it (SIGTERM to the master, or
falling off the end of ``main``), waits for it to exit, and then counts what arrived:

* at :class:`StatsdReceiver`, a UDP socket on the loopback, for the DogStatsD clients;
* at :class:`HttpIntake`, an HTTP server on the loopback standing in for the Datadog
  API, for ``ThreadStats``.

``settings`` adds environment variables for the app (``SRV_FLUSH_INTERVAL`` sets
conveyor's ``flush_interval``: a long one leaves the exit paths alone to deliver).

Nothing is synchronised by sleeping: every wait polls a real condition (a log line, a
task result, a process's exit, a marker datagram) within a deadline. Every process is
started in its own session and the whole group is killed when the scenario ends,
whatever happened. ``tests/lifecycle/test_servers.py`` runs the conveyor scenarios;
``bench/lifecycle/compare.py`` runs all of them for the comparison in
``docs/lifecycle.md``.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conveyor.protocol import parse_packet

HERE = Path(__file__).resolve().parent
APPS = HERE / "server_apps"
CLIENTS = ("conveyor", "dogstatsd", "dogstatsd-bg-agg", "threadstats")

#: The metric each scenario's app increments (see server_apps/).
GUNICORN_METRIC = "srv.requests"
CELERY_METRIC = "srv.health_check"
SCRIPT_METRIC = "srv.script"


class ScenarioError(RuntimeError):
    """The server did not get to the point where counting makes sense (with its log).

    Not an ``AssertionError``: a scenario that could not run is not a wrong count."""


@dataclass
class Outcome:
    """What one run of a scenario gave."""

    scenario: str
    client: str
    expected: int
    delivered: int
    exit_code: int | None
    seconds: float
    #: distinct worker processes that served requests or ran tasks (0 if unknown)
    workers: int = 0
    #: datagrams the kernel dropped at the UDP receiver because its buffer was full
    #: (the harness's fault, not the client's: should stay 0)
    receiver_overflows: int = 0
    #: lines the receiver could not parse (should stay 0)
    bad_lines: int = 0
    log_tail: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.expected - self.delivered


# -- waiting ------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; raise :class:`ScenarioError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() >= deadline:
            raise ScenarioError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)  # the pace of the poll, not a synchronisation
        delay = min(delay * 2, 0.1)


def _udp_socket_drops(port: int) -> int:
    """How many datagrams the kernel dropped for the IPv4 UDP socket bound to ``port``
    on 127.0.0.1 (its receive buffer was full): the ``drops`` column of /proc/net/udp."""
    local = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) > 12 and fields[1] == local:
            return int(fields[-1])
    return 0


# -- receivers ----------------------------------------------------------------------------


class StatsdReceiver:
    """A DogStatsD stand-in: a UDP socket with a large buffer, read by a thread.

    The thread only stores what it reads (parsing would slow it down: a client that
    sends one datagram per call sends 100,000 in well under a second); :meth:`count`
    parses. It first sends a marker datagram to the socket and waits until the thread
    has read it: datagrams on one socket are read in the order the kernel queued them,
    and on the loopback a datagram is queued during the sender's ``sendto``, so once the
    sender has exited, everything it sent is ahead of the marker.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for 100,000 one-line datagrams (about 1 KiB each, kernel overhead
        # included) if the thread falls behind. SO_RCVBUFFORCE (Linux, 33; Python does
        # not name it) passes net.core.rmem_max but needs CAP_NET_ADMIN; SO_RCVBUF is
        # capped at rmem_max. overflows tells whether it was enough.
        force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)
        for option in (force, socket.SO_RCVBUF):
            if option is None:
                continue
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, option, 256 << 20)
                break
            except OSError:
                continue
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.counts: Counter[str] = Counter()
        self.packets = 0
        self.bad_lines = 0
        self._received: list[bytes] = []  # appended to by the thread only
        self._parsed = 0  # how many of them count() has parsed
        self._markers: dict[bytes, int] = {}  # marker -> datagrams received before it
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="statsd-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        received = self._received
        recv = self.sock.recv
        while True:
            try:
                packet = recv(65536)
            except OSError:
                return
            if packet[:1] != b"#":
                received.append(packet)
            elif packet.startswith(b"#marker "):
                with self._seen:
                    self._markers[packet] = len(received)
                    self._seen.notify_all()
            elif packet == b"#stop":
                return

    def count(self, metric: str, timeout: float = 10.0) -> int:
        """Everything that arrived for ``metric`` so far (see the class docstring)."""
        marker = b"#marker " + uuid.uuid4().hex.encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.sendto(marker, ("127.0.0.1", self.port))
        with self._seen:
            if not self._seen.wait_for(lambda: marker in self._markers, timeout):
                raise ScenarioError("the receiver thread did not read its marker datagram")
            end = self._markers.pop(marker)
        fresh, self._parsed = self._received[self._parsed : end], end
        for packet in fresh:
            result = parse_packet(packet)
            self.packets += 1
            self.bad_lines += result.bad_lines
            for line in result.metrics:
                if line.type == "c":
                    self.counts[line.name] += round(sum(line.values) / line.sample_rate)
        return self.counts[metric]

    @property
    def overflows(self) -> int:
        return _udp_socket_drops(self.port)

    def close(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.sendto(b"#stop", ("127.0.0.1", self.port))
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> StatsdReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpIntake:
    """A Datadog API stand-in on the loopback: accepts every POST and sums the points
    of each series (``rate`` points times their interval, as the API does)."""

    def __init__(self) -> None:
        intake = self
        self.counts: Counter[str] = Counter()
        self.posts: Counter[str] = Counter()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "gzip":
                    body = gzip.decompress(body)
                intake.record(self.path, body)
                reply = b'{"status": "ok"}'
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-intake", daemon=True
        )
        self._thread.start()

    def record(self, path: str, body: bytes) -> None:
        """Called before the reply is sent: once a client has its reply, it is counted."""
        path = path.split("?", 1)[0]
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {}
        series = payload.get("series", []) if isinstance(payload, dict) else []
        with self._lock:
            self.posts[path] += 1
            for item in series:
                name = item.get("metric", "")
                interval = item.get("interval") or 1
                scale = interval if item.get("type") == "rate" else 1
                for _, value in item.get("points", []):
                    self.counts[name] += round(float(value) * scale)

    def count(self, metric: str) -> int:
        with self._lock:
            return self.counts[metric]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HttpIntake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Receivers:
    statsd: StatsdReceiver
    intake: HttpIntake

    def count(self, client: str, metric: str) -> int:
        if client == "threadstats":
            return self.intake.count(metric)
        return self.statsd.count(metric)


@contextlib.contextmanager
def receivers() -> Iterator[Receivers]:
    with StatsdReceiver() as statsd, HttpIntake() as intake:
        yield Receivers(statsd, intake)


# -- processes ----------------------------------------------------------------------------


def app_environment(client: str, found: Receivers, **extra: str) -> dict[str, str]:
    """The environment of a server or script: the client, where it sends, and nothing
    from this environment that would send it elsewhere."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}, not {client!r}")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DD_", "DATADOG_", "CONVEYOR_", "SRV_"))
        and k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
    }
    path = [str(APPS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        SRV_CLIENT=client,
        SRV_STATSD_PORT=str(found.statsd.port),
        SRV_API_URL=found.intake.url,
        PYTHONPATH=os.pathsep.join(path),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Server:
    """A subprocess in its own session, logging to a file; the whole process group is
    killed by :meth:`kill` (and on leaving the ``with`` block) if still there."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 -- closed in kill()
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=APPS,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, count: int, timeout: float) -> list[str]:
        """Wait until the log has ``count`` lines matching ``pattern`` (the process must
        stay alive meanwhile); returns the matches."""
        regex = re.compile(pattern)
        found: list[str] = []

        def ready() -> bool:
            nonlocal found
            found = regex.findall(self.log_text())
            if len(found) >= count:
                return True
            if not self.alive():
                raise ScenarioError(
                    f"the server exited ({self.process.returncode}) before logging "
                    f"{count} x {pattern!r}:\n{self.log_tail()}"
                )
            return False

        try:
            wait_until(ready, timeout, f"{count} x {pattern!r} in the log")
        except ScenarioError as error:
            raise ScenarioError(f"{error}\n{self.log_tail()}") from None
        return found

    def terminate_and_wait(self, timeout: float, alone_grace: float | None = None) -> int | None:
        """SIGTERM to the main process, then wait (bounded) for it to exit.

        With ``alone_grace``: if the main process is still there after that many seconds
        but every other process of its group has exited, give up on it and return None
        (Celery's main process, rarely, never finishes a warm shutdown once its pool is
        gone: see docs/lifecycle.md)."""
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        if alone_grace is not None:
            try:
                return self.process.wait(min(alone_grace, timeout))
            except subprocess.TimeoutExpired:
                if self.group() == [self.pid]:
                    return None
        try:
            return self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ScenarioError(
                f"the server did not exit within {timeout:.0f} s of SIGTERM; its processes:\n"
                f"{self.describe()}\nits log:\n{self.log_tail()}"
            ) from None

    def _group_stats(self) -> dict[int, list[str]]:
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
            except (OSError, ValueError):
                continue
            # fields[0] is the state, fields[2] the process group; zombies have exited
            if len(fields) > 2 and int(fields[2]) == self.pid and fields[0] != "Z":
                found[int(entry.name)] = fields
        return found

    def group(self) -> list[int]:
        """The live processes of this server's process group, sorted."""
        return sorted(self._group_stats())

    def describe(self) -> str:
        """The processes left in this server's group: pid, state, kernel wait channel,
        command line (for the message of a failure)."""
        rows = []
        for pid, fields in sorted(self._group_stats().items()):
            try:
                wchan = Path(f"/proc/{pid}/wchan").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            rows.append(f"  {pid} {fields[0]} {wchan or '-'} {argv[:120]}")
        return "\n".join(rows) or "  (none)"

    def kill(self) -> None:
        """Kill whatever is left of this server's process group (workers included)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log_file.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- scenarios ----------------------------------------------------------------------------


def run_gunicorn(
    client: str,
    requests: int = 400,
    workers: int = 4,
    concurrency: int = 8,
    settings: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """gunicorn, ``preload_app = True``, ``workers`` sync workers; ``requests`` GETs that
    each record one increment; SIGTERM to the master; wait for it to exit; count."""
    started = time.monotonic()
    deadline = started + timeout
    with receivers() as found, tempfile.TemporaryDirectory(prefix="srv-gunicorn-") as tmp:
        listener = socket.create_server(("127.0.0.1", 0), backlog=2 * requests)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        log = Path(tmp) / "gunicorn.log"
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(APPS / "srv_gunicorn_conf.py"),
            "--workers",
            str(workers),
            "--bind",
            f"fd://{fd}",
            "--log-level",
            "info",
            "srv_wsgi:application",
        ]
        env = app_environment(client, found, **(settings or {}))
        try:
            server = Server(argv, env, log, pass_fds=(fd,))
        finally:
            listener.close()  # the server holds its own copy
        with server:
            server.wait_for_log(
                r"Booting worker with pid: (\d+)", workers, deadline - time.monotonic()
            )

            def get(_: int) -> int:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    connection.request("GET", "/")
                    response = connection.getresponse()
                    body = response.read()
                finally:
                    connection.close()
                if response.status != 200:
                    raise ScenarioError(f"HTTP {response.status}: {body[:200]!r}")
                return int(body)

            with ThreadPoolExecutor(concurrency) as pool:
                pids = Counter(pool.map(get, range(requests)))
            exit_code = server.terminate_and_wait(max(1.0, deadline - time.monotonic()))
            delivered = found.count(client, GUNICORN_METRIC)
            return Outcome(
                scenario="gunicorn",
                client=client,
                expected=requests,
                delivered=delivered,
                exit_code=exit_code,
                seconds=time.monotonic() - started,
                workers=len(pids),
                receiver_overflows=found.statsd.overflows,
                bad_lines=found.statsd.bad_lines,
                log_tail=server.log_tail(),
                details={"requests_per_worker": sorted(pids.values())},
            )


def run_celery(
    client: str,
    tasks: int = 200,
    processes: int = 4,
    max_tasks_per_child: int | None = None,
    settings: Mapping[str, str] | None = None,
    timeout: float = 90.0,
) -> Outcome:
    """A Celery worker with the prefork pool; ``tasks`` health checks sent from here,
    each recording one increment; wait for every result; SIGTERM (warm shutdown); wait
    for the worker to exit; count."""
    from celery import Celery  # type: ignore[import-untyped]

    sys.path.insert(0, str(APPS))
    try:
        from srv_celery_config import TASK, configure, deliver_outbox
    finally:
        sys.path.remove(str(APPS))

    started = time.monotonic()
    deadline = started + timeout
    with receivers() as found, tempfile.TemporaryDirectory(prefix="srv-celery-") as tmp:
        log = Path(tmp) / "worker.log"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "srv_celery",
            "worker",
            "--pool=prefork",
            f"--concurrency={processes}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname=srv-{os.getpid()}@localhost",
        ]
        if max_tasks_per_child is not None:
            argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
        env = app_environment(client, found, SRV_CELERY_DIR=tmp, **(settings or {}))
        producer = Celery("srv_producer")
        configure(producer, tmp, producer=True)
        with Server(argv, env, log) as server, contextlib.closing(producer):
            results = [producer.send_task(TASK) for _ in range(tasks)]
            if deliver_outbox(tmp) != tasks:
                raise ScenarioError(f"kombu did not write {tasks} messages to the outbox")
            for result in results:

                def done(result: Any = result) -> bool:
                    if not server.alive():
                        raise ScenarioError(f"the worker exited early:\n{server.log_tail()}")
                    return bool(result.ready())

                try:
                    wait_until(done, deadline - time.monotonic(), "the tasks' results")
                except ScenarioError as error:
                    missing = sum(not r.ready() for r in results)
                    raise ScenarioError(
                        f"{error} ({missing} of {tasks} missing); the worker's log and its "
                        f"main process's threads:\n{server.log_tail()}\n{_celery_stacks(server)}"
                    ) from None
                if result.get(timeout=1) != "ok":
                    raise ScenarioError(f"task {result.id} returned {result.result!r}")
            details: dict[str, Any] = {}
            exit_code = server.terminate_and_wait(
                max(1.0, deadline - time.monotonic()), alone_grace=20.0
            )
            if exit_code is None:
                details["main_process_hung"] = _celery_stacks(server)
            delivered = found.count(client, CELERY_METRIC)
            children = set(re.findall(r"ForkPoolWorker-(\d+)", server.log_text()))
            return Outcome(
                scenario="celery" if max_tasks_per_child is None else "celery-recycling",
                client=client,
                expected=tasks,
                delivered=delivered,
                exit_code=exit_code,
                seconds=time.monotonic() - started,
                workers=len(children),
                receiver_overflows=found.statsd.overflows,
                bad_lines=found.statsd.bad_lines,
                log_tail=server.log_tail(),
                details=details,
            )


def _celery_stacks(server: Server) -> str:
    """Celery's worker prints every thread's stack on SIGUSR1: what its main process was
    doing when it hung (for the report)."""
    before = len(server.log_text())
    server.process.send_signal(signal.SIGUSR1)
    with contextlib.suppress(ScenarioError):
        wait_until(lambda: "MainThread" in server.log_text()[before:], 5.0, "the stack dump")
    return f"{server.describe()}\n{server.log_text()[before:]}"


def run_script(
    client: str,
    increments: int = 100_000,
    scope: str = "module",
    settings: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """A plain script that records ``increments`` increments and falls off the end of
    ``main``; wait for it to exit; count. ``scope`` is where the script keeps its
    client: ``"module"`` (a global made at import) or ``"main"`` (a local of ``main``)."""
    started = time.monotonic()
    with receivers() as found, tempfile.TemporaryDirectory(prefix="srv-script-") as tmp:
        env = app_environment(
            client,
            found,
            SRV_SCRIPT_N=str(increments),
            SRV_SCRIPT_SCOPE=scope,
            **(settings or {}),
        )
        argv = [sys.executable, str(APPS / "srv_script.py")]
        with Server(argv, env, Path(tmp) / "script.log") as server:
            try:
                exit_code = server.process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise ScenarioError(f"the script ran over {timeout:.0f} s") from None
            delivered = found.count(client, SCRIPT_METRIC)
            return Outcome(
                scenario="script" if scope == "module" else f"script-{scope}",
                client=client,
                expected=increments,
                delivered=delivered,
                exit_code=exit_code,
                seconds=time.monotonic() - started,
                receiver_overflows=found.statsd.overflows,
                bad_lines=found.statsd.bad_lines,
                log_tail=server.log_tail(),
            )
