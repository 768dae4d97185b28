"""The load generator: a few threads of this process sending HTTP requests to the shop
at a steady pace for a fixed time, queuing a job for each order placed, and recording
what they see through their own ``conveyor.Client``.

Requests follow a fixed plan, numbered across the threads: of every 20, one ``/fail``
(a declined payment: a 500 on purpose), six ``/order`` and thirteen ``/search``. Each
order placed queues a ``send_receipt`` job; every 25th request also queues a
``reindex``. Connections go through ``http.client`` (no proxy from the environment can
get between the demo and its loopback server).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable

from ._books import TalliedClient

Submit = Callable[[str, list[int]], None]


class LoadGenerator:
    def __init__(
        self,
        port: int,
        metrics: TalliedClient,
        submit: Submit,
        *,
        threads: int = 3,
        rate: float = 200.0,
    ) -> None:
        self._port = port
        self._metrics = metrics
        self._submit = submit
        self._threads = [
            threading.Thread(target=self._run, name=f"demo-load-{i}", daemon=True)
            for i in range(threads)
        ]
        self._interval = threads / rate  # seconds between two requests of one thread
        self._lock = threading.Lock()
        self._next_number = 0
        self._until = 0.0
        self.outcomes: Counter[str] = Counter()  # "200", "500", "error: ConnectionResetError"
        self.jobs: Counter[str] = Counter()

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())

    def start(self, duration: float) -> None:
        self._until = time.monotonic() + duration
        for thread in self._threads:
            thread.start()

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _number(self) -> int:
        with self._lock:
            number = self._next_number
            self._next_number += 1
            return number

    def _run(self) -> None:
        due = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self._until:
                return
            if now < due:
                time.sleep(due - now)  # the load's pace, not a synchronisation
            due = max(due + self._interval, now)
            self._one(self._number())

    def _one(self, number: int) -> None:
        slot = number % 20
        if slot == 0:
            endpoint, path = "/fail", "/fail"
        elif slot < 7:
            endpoint, path = "/order", f"/order?items={number % 5 + 1}"
        else:
            endpoint, path = "/search", f"/search?q=item{number % 97}"
        started = time.perf_counter()
        try:
            status, reply = self._get(path)
            outcome = str(status)
        except (OSError, http.client.HTTPException, ValueError) as error:
            status, reply, outcome = 0, {}, f"error: {type(error).__name__}"
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics = self._metrics
        metrics.increment("loadgen.requests", tags=[f"endpoint:{endpoint}", f"outcome:{outcome}"])
        metrics.histogram("loadgen.latency", elapsed_ms, tags=[f"endpoint:{endpoint}"])
        with self._lock:
            self.outcomes[outcome] += 1
        if endpoint == "/order" and status == 200:
            self._queue("send_receipt", [int(reply["order"]), int(reply["items"])])
        if number % 25 == 3:
            self._queue("reindex", [number % 40 + 10])

    def _queue(self, task: str, args: list[int]) -> None:
        self._submit(task, args)
        self._metrics.increment("loadgen.jobs", tags=[f"task:{task}"])
        with self._lock:
            self.jobs[task] += 1

    def _get(self, path: str) -> tuple[int, dict[str, int]]:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        return response.status, json.loads(body)
