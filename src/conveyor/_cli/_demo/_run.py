"""The orchestrator: starts the agent, the shop and the job worker, drives the load,
recycles a worker, stops everything the way production does, and checks the books.

Phases, each with a deadline (nothing waits forever; a server that stalls is reported
with the end of its log, and the demo exits 3):

1. the error receiver (in this process), ``conveyor agent``, gunicorn and the Celery
   worker start; the demo waits for the agent's "listening", gunicorn's workers and
   Celery's "ready";
2. the load runs for ``duration`` seconds; halfway through one gunicorn worker gets
   SIGTERM (as ``max_requests`` or a deploy would end it; its master starts another)
   and the agent's Prometheus endpoint is scraped once;
3. the demo waits for every job's result, then SIGTERMs gunicorn's master (the
   workers exit through ``sys.exit``) and Celery's main process (a warm shutdown: the
   children exit through ``os._exit``), closes its own client, and SIGTERMs the agent,
   which writes a final flush;
4. the books of every process are added up and compared, metric by metric, with what
   the agent wrote to its JSON-lines file and with what the error receiver got.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ._books import ERRORS_URL_VARIABLE, RUN_DIR_VARIABLE, Books, ProcessBooks, TalliedClient
from ._books import read_books as _read_books
from ._jobs_config import JOBS_DIR_VARIABLE, REINDEX, SEND_RECEIPT, configure, deliver_outbox
from ._load import LoadGenerator
from ._received import ErrorReceiver, Row, compare, read_jsonl, total_recorded
from ._services import AgentFlushes, DemoError, Service, wait_until
from ._view import LiveView

WEB_WORKERS = 3
JOB_WORKERS = 2
MAX_TASKS_PER_CHILD = 250  # Celery recycles each child after this many tasks
LOAD_THREADS = 3
REQUESTS_PER_SECOND = 300.0
FLUSH_INTERVAL = 1.0  # the agent's, so that flushes are seen as they happen
_READ_EVERY = 0.2  # seconds between two readings of the books by the live view

_TASKS = {"send_receipt": SEND_RECEIPT, "reindex": REINDEX}
_OUR_PREFIXES = ("shop_", "jobs_", "loadgen_")  # the demo's series, as Prometheus names them
_SOURCE_ROOT = str(Path(__file__).resolve().parents[3])  # where `conveyor` is imported from


@dataclass(frozen=True)
class Settings:
    port: int = 8125
    prometheus_port: int = 9102
    duration: float = 20.0
    run_dir: Path | None = None


def _fmt(number: float) -> str:
    return f"{number:,.0f}"


class Demo:
    def __init__(self, settings: Settings, run_dir: Path, out: TextIO) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.out = out
        self.jsonl = run_dir / "agent.jsonl"
        self.started = time.monotonic()
        self.services: list[Service] = []
        self.receiver: ErrorReceiver | None = None
        self.flushes: AgentFlushes | None = None
        self.load: LoadGenerator | None = None
        self.loadgen_books: Books | None = None
        self.loadgen_client: TalliedClient | None = None
        self.producer: Any = None
        self.results: list[Any] = []
        self.results_lock = threading.Lock()
        self.recycled_pid = 0
        self.shutdown_at = float("inf")  # time.time() when the servers were told to stop
        self.noted: set[int] = set()  # pids whose final books were announced
        self.books_now: list[ProcessBooks] = []  # read at most every _READ_EVERY seconds
        self._next_read = 0.0
        self.problems: list[str] = []
        self.phase = "starting"
        self.view = LiveView(self._block, self._line, out)

    # -- output --------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        self.view.note(text)

    def tick(self, force: bool = False) -> None:
        """Read the books, announce the processes that ended, redraw: called by every
        wait of the demo's main thread."""
        now = time.monotonic()
        if not force and now < self._next_read:
            return
        self._next_read = now + _READ_EVERY
        self.books_now = _read_books(self.run_dir)
        self._note_final_books()
        self.view.tick(force)

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f} s"

    def _processes(self) -> list[tuple[str, int, str, dict[str, Any]]]:
        """(role, pid, state, client statistics) for every process that recorded."""
        rows = []
        for books in self.books_now:
            if books.role == "loadgen":
                continue
            state = "running" if not books.final else self._how_it_ended(books)
            rows.append((books.role, books.pid, state, books.client))
        if self.loadgen_client is not None:
            stats = self.loadgen_client.statistics()
            state = "running" if self.phase in ("load", "drain", "stop") else "closed"
            rows.append(
                (
                    "loadgen",
                    os.getpid(),
                    state,
                    {
                        "recorded": stats.recorded,
                        "sent": stats.sent,
                        "dropped": stats.dropped_total,
                        "pending": stats.pending,
                    },
                )
            )
        return rows

    def _how_it_ended(self, books: ProcessBooks) -> str:
        if books.pid == self.recycled_pid:
            return "recycled"
        if books.role == "jobs" and books.written_at < self.shutdown_at:
            return "recycled"
        if books.role == "loadgen":
            return "closed"
        return "shut down"

    def _load_text(self) -> str:
        load = self.load
        if load is None:
            return self.phase
        with self.results_lock:
            submitted = len(self.results)
        done = sum(books.tally.get(("histogram", "jobs.duration"), 0) for books in self.books_now)
        failed = load.outcomes.get("500", 0)
        return (
            f"{self.phase:<5} requests {_fmt(load.requests)} ({_fmt(failed)} failed on purpose),"
            f" jobs {_fmt(submitted)} queued/{_fmt(done)} done"
        )

    def _agent_text(self) -> str:
        flushes = self.flushes
        if flushes is None:
            return "agent: not started"
        if not flushes.last_header:
            return f"agent: {flushes.count} flushes"
        return f"agent: {flushes.count} flushes (last: {flushes.last_header})"

    def _block(self) -> list[str]:
        lines = [f"  {self._elapsed()}  {self._load_text()}"]
        lines.append(f"    {'process':<16}{'recorded':>10}{'sent':>10}{'dropped':>9}{'pending':>9}")
        ended: Counter[str] = Counter()
        for role, pid, state, client in self._processes():
            if state not in ("running",):
                ended["processes"] += 1
                for key in ("recorded", "sent", "dropped"):
                    ended[key] += int(client.get(key, 0))
                continue
            lines.append(
                f"    {role:<7} {pid:<8}{_fmt(client.get('recorded', 0)):>10}"
                f"{_fmt(client.get('sent', 0)):>10}{_fmt(client.get('dropped', 0)):>9}"
                f"{_fmt(client.get('pending', 0)):>9}"
            )
        if ended:
            lines.append(
                f"    {'ended: ' + str(ended['processes']):<16}{_fmt(ended['recorded']):>10}"
                f"{_fmt(ended['sent']):>10}{_fmt(ended['dropped']):>9}"
            )
        lines.append(f"    {self._agent_text()}")
        return lines

    def _line(self) -> str:
        totals: Counter[str] = Counter()
        processes = self._processes()
        for _, _, _, client in processes:
            for key in ("recorded", "sent", "dropped"):
                totals[key] += int(client.get(key, 0))
        flushes = self.flushes.count if self.flushes is not None else 0
        return (
            f"  {self._elapsed()}  {self._load_text()} | {len(processes)} processes recorded "
            f"{_fmt(totals['recorded'])}, sent {_fmt(totals['sent'])}, dropped "
            f"{_fmt(totals['dropped'])} | agent flushes {flushes}"
        )

    def _note_final_books(self) -> None:
        for books in self.books_now:
            if not books.final or books.pid in self.noted or books.role == "loadgen":
                continue
            self.noted.add(books.pid)
            client = books.client
            held = client.get("pending_at_exit")
            flushed = f" ({_fmt(held)} held at exit, sent by its exit flush)" if held else ""
            self.say(
                f"  {self._elapsed()}  {books.role} {books.pid} {self._how_it_ended(books)}: "
                f"recorded {_fmt(client.get('recorded', 0))}, sent "
                f"{_fmt(client.get('sent', 0))}{flushed}, dropped {_fmt(client.get('dropped', 0))}"
            )

    # -- set-up ----------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("DD_", "DATADOG_", "CONVEYOR_"))
        }
        path = [_SOURCE_ROOT, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update(
            {
                "CONVEYOR_URL": f"udp://127.0.0.1:{self.settings.port}",
                RUN_DIR_VARIABLE: str(self.run_dir),
                JOBS_DIR_VARIABLE: str(self.run_dir / "jobs"),
                ERRORS_URL_VARIABLE: self.receiver.url if self.receiver else "",
                "PYTHONPATH": os.pathsep.join(path),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start_agent(self) -> Service:
        argv = [
            sys.executable,
            "-m",
            "conveyor",
            "agent",
            "--listen",
            f"udp://127.0.0.1:{self.settings.port}",
            "--flush-interval",
            f"{FLUSH_INTERVAL:g}",
            "--stdout",
            "--prometheus",
            f"127.0.0.1:{self.settings.prometheus_port}",
            "--jsonl",
            str(self.jsonl),
        ]
        agent = Service(
            "conveyor agent",
            argv,
            self.environment(),
            self.run_dir / "agent.log",
            self.run_dir,
            stdout=subprocess.PIPE,
        )
        self.services.append(agent)
        assert agent.process.stdout is not None
        self.flushes = AgentFlushes(agent.process.stdout)
        shown = " ".join(argv[2:]).replace(str(self.run_dir), "<run dir>")
        self.say(f"  agent    {shown}  (pid {agent.pid})")
        return agent

    def start_web(self) -> tuple[Service, int]:
        listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        port = listener.getsockname()[1]
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(Path(__file__).with_name("_gunicorn_conf.py")),
            "--workers",
            str(WEB_WORKERS),
            "--bind",
            f"fd://{listener.fileno()}",
            "--log-level",
            "info",
            "conveyor._cli._demo._shop:application",
        ]
        try:
            web = Service(
                "gunicorn",
                argv,
                self.environment(),
                self.run_dir / "gunicorn.log",
                self.run_dir,
                pass_fds=(listener.fileno(),),
            )
        finally:
            listener.close()  # gunicorn holds its own copy
        self.services.append(web)
        self.say(
            f"  web      gunicorn --preload, {WEB_WORKERS} sync workers, the shop on "
            f"http://127.0.0.1:{port}  (master pid {web.pid})"
        )
        return web, port

    def start_jobs(self) -> Service:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "conveyor._cli._demo._jobs",
            "worker",
            "--pool=prefork",
            f"--concurrency={JOB_WORKERS}",
            f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--hostname=conveyor-demo-{os.getpid()}@localhost",
        ]
        jobs = Service(
            "the Celery worker", argv, self.environment(), self.run_dir / "celery.log", self.run_dir
        )
        self.services.append(jobs)
        self.say(
            f"  jobs     celery worker --pool=prefork --concurrency={JOB_WORKERS} "
            f"--max-tasks-per-child={MAX_TASKS_PER_CHILD}, broker filesystem://  "
            f"(pid {jobs.pid})"
        )
        return jobs

    def submit(self, task: str, args: list[int]) -> None:
        with self.results_lock:  # kombu's producer is not made for several threads at once
            self.results.append(self.producer.send_task(_TASKS[task], args=args))
            deliver_outbox(str(self.run_dir / "jobs"))

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        self.say(
            "conveyor demo: a shop under gunicorn, its jobs under Celery and a load generator,"
        )
        self.say("all recording metrics, events and errors through conveyor; nothing may be lost.")
        self.say(f"  run dir  {self.run_dir}")
        self.receiver = ErrorReceiver()
        self.say(f"  errors   {self.receiver.url}  (an error tracker's stand-in, in this process)")
        agent = self.start_agent()
        deadline = time.monotonic() + 30
        agent.wait_for_log(r"listening on", 1, deadline, self.tick)
        web, web_port = self.start_web()
        jobs = self.start_jobs()
        booted = web.wait_for_log(
            r"Booting worker with pid: (\d+)", WEB_WORKERS, deadline, self.tick
        )
        jobs.wait_for_log(r"\bready\.", 1, deadline, self.tick)
        self.say(f"  {self._elapsed()}  all up: web workers {', '.join(booted)}")

        from celery import Celery  # type: ignore[import-untyped]

        self.producer = Celery("conveyor_demo_producer")
        configure(self.producer, str(self.run_dir / "jobs"), producer=True)
        self.loadgen_books = Books("loadgen", str(self.run_dir))
        self.loadgen_client = TalliedClient(
            self.loadgen_books, url=f"udp://127.0.0.1:{settings.port}"
        )
        self.load = LoadGenerator(
            web_port,
            self.loadgen_client,
            self.submit,
            threads=LOAD_THREADS,
            rate=REQUESTS_PER_SECOND,
        )
        self.phase = "load"
        self.say(
            f"  {self._elapsed()}  load: {LOAD_THREADS} threads, {REQUESTS_PER_SECOND:g} "
            f"requests/s for {settings.duration:g} s; each order queues a job"
        )
        load_started = time.monotonic()
        self.load.start(settings.duration)
        halfway = load_started + settings.duration / 2
        wait_until(lambda: time.monotonic() >= halfway, halfway + 5, "halfway", self.tick)
        self.recycle_one_worker(web)
        self.scrape_prometheus()
        load = self.load
        wait_until(load.done, load_started + settings.duration + 30, "the load threads", self.tick)

        self.phase = "drain"
        self.drain_jobs(jobs)
        self.phase = "stop"
        self.shutdown_at = time.time()
        self.stop_web(web)
        self.stop_jobs(jobs)
        self.loadgen_client.close()
        self.loadgen_books.close("closed")
        self.phase = "agent"
        self.stop_agent(agent)
        self.phase = "done"
        self.tick(force=True)
        self.view.close()
        return self.summary()

    def recycle_one_worker(self, web: Service) -> None:
        workers = {b.pid for b in _read_books(self.run_dir) if b.role == "web" and not b.final}
        alive = [pid for pid in web.group() if pid in workers and pid != web.pid]
        if not alive:
            self.problems.append("no running web worker had recorded anything by halfway")
            return
        self.recycled_pid = alive[0]
        os.kill(self.recycled_pid, signal.SIGTERM)  # finish the request in hand, then exit
        self.say(
            f"  {self._elapsed()}  recycling web worker {self.recycled_pid}: SIGTERM, as "
            "max_requests or a deploy would; gunicorn starts another"
        )

    def scrape_prometheus(self) -> None:
        """GET the agent's /metrics until it shows the demo's series (there are none
        before the agent's first flush that follows a client's first flush)."""
        url = f"http://127.0.0.1:{self.settings.prometheus_port}/metrics"
        samples: list[str] = []
        status = 0

        def scraped() -> bool:
            nonlocal samples, status
            status, text = self._get_metrics()
            samples = [line for line in text.splitlines() if line.startswith(_OUR_PREFIXES)]
            return bool(samples)

        try:
            wait_until(scraped, time.monotonic() + 5, "demo series at /metrics", self.tick)
        except (DemoError, OSError, http.client.HTTPException) as error:
            self.problems.append(f"the Prometheus endpoint {url} served no demo series: {error}")
            return
        example = next((s for s in samples if s.startswith("shop_requests_total")), samples[0])
        self.say(
            f"  {self._elapsed()}  Prometheus: GET {url} -> HTTP {status}, "
            f"{len(samples)} demo samples, e.g. {example}"
        )

    def _get_metrics(self) -> tuple[int, str]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.settings.prometheus_port, timeout=5
        )
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    def drain_jobs(self, jobs: Service) -> None:
        with self.results_lock:
            results = list(self.results)
        self.say(f"  {self._elapsed()}  load done; waiting for {len(results):,} job results")
        deadline = time.monotonic() + 30
        for result in results:

            def ready(result: Any = result) -> bool:
                try:
                    return bool(result.ready())
                except Exception:
                    # The file:// backend writes a result in place: a read can land
                    # between its open and its write. Read it again at the next poll.
                    return False

            try:
                wait_until(ready, deadline, "the job results", self.tick)
            except DemoError:
                if not jobs.alive():
                    raise DemoError(
                        f"the Celery worker exited early; the end of {jobs.log}:\n{jobs.log_tail()}"
                    ) from None
                missing = sum(not r.ready() for r in results)
                raise DemoError(
                    f"the Celery worker stalled: {missing:,} of {len(results):,} job results "
                    "had not arrived 30 s after the load ended (billiard's prefork pool is "
                    f"known to stall, rarely: docs/lifecycle.md); the end of {jobs.log}:\n"
                    f"{jobs.log_tail()}"
                ) from None

    def stop_web(self, web: Service) -> None:
        self.say(f"  {self._elapsed()}  stopping gunicorn: SIGTERM to its master")
        web.terminate()
        wait_until(lambda: not web.alive(), time.monotonic() + 30, "gunicorn to exit", self.tick)

    def stop_jobs(self, jobs: Service) -> None:
        self.say(f"  {self._elapsed()}  stopping Celery: SIGTERM to its main process (warm stop)")
        jobs.terminate()
        deadline = time.monotonic() + 30
        alone_since = 0.0

        def exited() -> bool:
            nonlocal alone_since
            if not jobs.alive():
                return True
            # Celery's main process, rarely, never finishes its warm shutdown once its
            # children are gone (docs/lifecycle.md). It records nothing: let it go.
            if jobs.group() == [jobs.pid]:
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since > 10:
                    jobs.kill()
                    self.say("  Celery's main process hung after its children exited: killed")
                    return True
            return False

        wait_until(exited, deadline, "the Celery worker to exit", self.tick)

    def stop_agent(self, agent: Service) -> None:
        self.say(f"  {self._elapsed()}  stopping the agent: SIGTERM (it writes a final flush)")
        agent.terminate()
        wait_until(lambda: not agent.alive(), time.monotonic() + 15, "the agent to exit", self.tick)
        if self.flushes is not None:
            self.flushes.join(5)
        if agent.process.returncode != 0:
            self.problems.append(
                f"the agent exited with status {agent.process.returncode}:\n{agent.log_tail()}"
            )

    def close(self) -> None:
        """Whatever happened: no process of ours outlives the demo."""
        if self.loadgen_client is not None:
            self.loadgen_client.close(timeout=1)  # while the agent is still there
        for service in reversed(self.services):
            if service.alive():
                service.terminate()
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.kill()
        if self.receiver is not None:
            self.receiver.close()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.close()

    # -- the books -------------------------------------------------------------------------

    def summary(self) -> int:
        books = _read_books(self.run_dir)
        recorded = total_recorded(b.tally for b in books)
        received_from_agent = read_jsonl(self.jsonl)
        received = received_from_agent.series + (
            self.receiver.received() if self.receiver else Counter()
        )
        rows = compare(recorded, received)
        for process in books:
            if not process.final:
                self.problems.append(
                    f"{process.role} process {process.pid} left no final books (it was killed?)"
                )
        out = self.out
        print(
            "\nWhat was recorded, and what arrived (the agent's JSON lines; errors: the HTTP"
            "\nreceiver). Counters: the sum of their values; histograms and distributions: "
            "their\nsamples; events and errors: how many.",
            file=out,
        )
        print(_table(rows), file=out)
        print(
            "\nEach process, by its client's own statistics (calls; 'held at exit': what the"
            "\nclient still held when the process began to exit, sent by conveyor's exit flush)"
            "\nand its error dispatcher's (delivered/submitted):",
            file=out,
        )
        print(self._process_table(books), file=out)
        telemetry = received_from_agent.telemetry
        drops = sum(v for k, v in telemetry.items() if "kernel_drops" in k or "ring.dropped" in k)
        print(
            f"\nagent: {received_from_agent.flushes} flushes, "
            f"{_fmt(telemetry.get('packets', 0))} packets, {_fmt(telemetry.get('lines', 0))} "
            f"lines, {_fmt(drops)} dropped by the kernel or its ring",
            file=out,
        )
        if self.load is not None:
            outcomes = ", ".join(
                f"{_fmt(count)} {outcome}" for outcome, count in sorted(self.load.outcomes.items())
            )
            print(f"load: {_fmt(self.load.requests)} requests answered: {outcomes}", file=out)
        if self.receiver is not None:
            print(
                f"errors: {_fmt(sum(self.receiver.by_type.values()))} received over HTTP, "
                f"{self.receiver.duplicates} duplicates (de-duplicated by idempotency key)",
                file=out,
            )
        if not recorded:
            self.problems.append("no process recorded anything: there was nothing to compare")
        lost = [row for row in rows if not row.ok]
        for row in lost:
            self.problems.append(
                f"{row.kind} {row.name}: recorded {_fmt(row.recorded)}, received "
                f"{_fmt(row.received)} ({row.verdict})"
            )
        values = sum(row.recorded for row in rows if row.kind not in ("event", "error"))
        events = sum(row.recorded for row in rows if row.kind == "event")
        errors = sum(row.recorded for row in rows if row.kind == "error")
        ended_early = sum(1 for b in books if b.final and self._how_it_ended(b) == "recycled")
        print(file=out)
        if self.problems:
            print("SOMETHING WAS LOST (or went wrong):", file=out)
            for problem in self.problems:
                print(f"  - {problem}", file=out)
        else:
            metrics = sum(1 for row in rows if row.kind not in ("event", "error"))
            print(
                f"NOTHING LOST: {_fmt(values)} values in {metrics} metrics, {_fmt(events)} "
                f"events and {_fmt(errors)} errors, recorded by {len(books)} processes "
                f"({ended_early} of them recycled mid-run), all received.",
                file=out,
            )
        print(self._where_next(), file=out)
        print(f"(the whole demo took {time.monotonic() - self.started:.1f} s)", file=out)
        return 1 if self.problems else 0

    def _process_table(self, books: list[ProcessBooks]) -> str:
        lines = [
            f"  {'process':<16}{'ended':<11}{'recorded':>9}{'sent':>9}{'dropped':>8}"
            f"{'held at exit':>14}{'errors sent':>13}"
        ]
        for process in books:
            client = process.client
            how = self._how_it_ended(process) if process.final else "NO BOOKS"
            held = client.get("pending_at_exit")
            errors = process.errors
            delivered = (
                f"{_fmt(errors.get('delivered', 0))}/{_fmt(errors.get('submitted', 0))}"
                if errors
                else "-"
            )
            lines.append(
                f"  {process.role:<7} {process.pid:<8}{how:<11}"
                f"{_fmt(client.get('recorded', 0)):>9}{_fmt(client.get('sent', 0)):>9}"
                f"{_fmt(client.get('dropped', 0)):>8}{'-' if held is None else _fmt(held):>14}"
                f"{delivered:>13}"
            )
        return "\n".join(lines)

    def _where_next(self) -> str:
        prometheus = f"http://127.0.0.1:{self.settings.prometheus_port}/metrics"
        return "\n".join(
            [
                "",
                "Where to look next:",
                f"  every flush, as JSON lines:  {self.jsonl}",
                f"  the logs:                    {self.run_dir}/{{agent,gunicorn,celery}}.log",
                f"  Prometheus (served while an agent runs; scraped above): {prometheus}",
                f"    try it: `{_python()} -m conveyor agent` in one terminal, then",
                f"    `curl -s {prometheus}` in another",
                "  docs: docs/client.md (the client), docs/lifecycle.md (fork and exit),",
                "        docs/delivery.md (errors over HTTP), docs/agent.md (the agent)",
            ]
        )


def _python() -> str:
    """This interpreter, as a user would type it from here (``.venv/bin/python``)."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def _shown_name(row: Row) -> str:
    # Errors are keyed by the exception's full name; its class name is enough to read.
    return row.name.rpartition(".")[2] if row.kind == "error" else row.name


def _table(rows: list[Row]) -> str:
    width = max([len(_shown_name(row)) for row in rows] + [6])
    lines = [f"  {'kind':<13}{'name':<{width}}  {'recorded':>10}  {'received':>10}"]
    lines.extend(
        f"  {row.kind:<13}{_shown_name(row):<{width}}  {_fmt(row.recorded):>10}  "
        f"{_fmt(row.received):>10}  {row.verdict}"
        for row in rows
    )
    return "\n".join(lines)


# -- the entry point -----------------------------------------------------------------------

_NEEDED = {
    "gunicorn": "gunicorn",
    "celery": "celery",
    "urllib3": "urllib3",
    "ddsketch": "ddsketch",
    "prometheus_client": "prometheus-client",
}


def missing_packages() -> list[str]:
    import importlib.util

    return [name for module, name in _NEEDED.items() if importlib.util.find_spec(module) is None]


def port_problem(port: int, kind: int, what: str, option: str) -> str | None:
    """Why ``port`` cannot be bound on 127.0.0.1 (None if it can)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        if kind == socket.SOCK_STREAM:  # as the agent's HTTP server does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return (
                f"{what} 127.0.0.1:{port} is taken ({error.strerror}); is an agent already "
                f"running? Pass {option} N to use another port."
            )
    return None


def run_demo(settings: Settings, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    missing = missing_packages()
    if missing:
        print(
            f"conveyor demo needs {', '.join(missing)}: pip install 'conveyor[demo]' "
            "(or `make demo`, which installs it)",
            file=sys.stderr,
        )
        return 2
    for problem in (
        port_problem(settings.port, socket.SOCK_DGRAM, "UDP port", "--port"),
        port_problem(settings.prometheus_port, socket.SOCK_STREAM, "TCP port", "--prometheus-port"),
    ):
        if problem:
            print(f"conveyor demo: {problem}", file=sys.stderr)
            return 2
    if settings.run_dir is not None:
        run_dir = settings.run_dir
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            # Books or flushes of an earlier run would be counted with this one's.
            print(f"conveyor demo: --run-dir {run_dir} must be new or empty", file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    demo = Demo(settings, run_dir, stream)
    # SIGTERM (a test's timeout, a supervisor) ends the demo like Ctrl-C: through the
    # `finally` below, which stops every process the demo started.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return demo.run()
    except DemoError as error:
        demo.view.close()
        print(f"\nconveyor demo: {error}\n(logs in {run_dir})", file=stream)
        return 3
    except KeyboardInterrupt:
        demo.view.close()
        print("\nconveyor demo: interrupted", file=stream)
        return 130
    finally:
        demo.close()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
