"""Delivery benchmark: conveyor's Dispatcher against the seed's design (a few threads
fed by a ``queue.Queue``, one HTTP request per item).

Three measurements, each repeated (``--rounds``) with the variants interleaved:

1. ``submit()`` cost in the caller's thread, in ns per call: a loop of ``n`` calls while
   the workers deliver to a local server, against ``queue.Queue.put_nowait`` (the
   seed's enqueue).
2. Delivered items/s to a local HTTP server (a separate process, so it does not share
   our GIL): the dispatcher (batches of up to 500, gzip, 8 workers at most) against the
   seed (8 threads, one POST per item, over the same pooled keep-alive urllib3
   connections, so the difference is batching and not connection set-up).
3. CPU used while the endpoint is down (a loopback port nobody listens on), in percent
   of one core over a window, after ``n`` items were submitted: the dispatcher (breaker
   open, retries on the heap) against the seed with its naive retry-at-once loop and
   with a fixed 1 s sleep between retries.

Run ``bench/delivery/delivery.py``; ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from _charts import Bar, Figure, Panel, add_publish_option, capture, publish, wants_publish
from _stats import environment, summarize, table
from conveyor import Dispatcher, HTTPTransport, Retry

SERVER = textwrap.dedent(
    """
    import gzip, json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    count = 0
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_POST(self):
            global count
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            data = json.loads(body)
            count += len(data) if isinstance(data, list) else 1
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def do_GET(self):
            payload = str(count).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(payload)))
            self.end_headers(); self.wfile.write(payload)
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    s.daemon_threads = True
    print(s.server_address[1], flush=True)
    s.serve_forever()
    """
)

#: The code measured (whose git state the published results name).
DELIVERY_CODE = (
    "src/conveyor/delivery",
    "src/conveyor/ring",
    "src/conveyor/transport",
    "src/conveyor/lifecycle",
    "src/conveyor/_ratelimit.py",
)

ITEM = {"type": "order", "id": 42, "amount": 19.99, "currency": "EUR", "tags": ["web", "eu"]}


class LocalServer:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        port = int(self.process.stdout.readline())
        self.url = f"http://127.0.0.1:{port}/v1/events"
        import urllib3

        self._http = urllib3.PoolManager()

    def count(self) -> int:
        return int(self._http.request("GET", self.url).data)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def dead_url() -> str:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1/events"


class Seed:
    """The seed's design: ``threads`` workers take items off a ``queue.Queue`` and POST
    each one on its own; a failure is retried at once (``pause=0``) or after ``pause``."""

    def __init__(self, url: str, threads: int = 8, pause: float | None = None) -> None:
        import urllib3

        self.queue: queue.Queue[Any] = queue.Queue()
        self.pool = urllib3.connection_from_url(url, maxsize=threads, retries=False)
        self.path = "/v1/events"
        self.pause = pause
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = False
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def submit(self, item: object) -> None:
        self.queue.put_nowait(item)

    def run(self) -> None:
        while not self.stop:
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            body = json.dumps(item).encode()
            while not self.stop:
                try:
                    self.pool.urlopen("POST", self.path, body=body, timeout=3.0)
                    with self.lock:
                        self.sent += 1
                    break
                except Exception:
                    if self.pause:
                        time.sleep(self.pause)
            self.queue.task_done()

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(2)


def bench_submit(url: str, n: int) -> tuple[float, float]:
    d = Dispatcher(HTTPTransport(url), max_queue=n + 1, max_workers=2)
    d.submit(ITEM)
    d.flush(10)
    t0 = time.perf_counter()
    for _ in range(n):
        d.submit(ITEM)
    conveyor_ns = (time.perf_counter() - t0) / n * 1e9
    d.flush(60)
    d.close()
    q: queue.Queue[Any] = queue.Queue()
    put = q.put_nowait
    t0 = time.perf_counter()
    for _ in range(n):
        put(ITEM)
    queue_ns = (time.perf_counter() - t0) / n * 1e9
    return conveyor_ns, queue_ns


def bench_throughput(server: LocalServer, n: int) -> tuple[float, float]:
    before = server.count()
    d = Dispatcher(HTTPTransport(server.url), max_queue=n + 1, max_workers=8)
    t0 = time.perf_counter()
    for _ in range(n):
        d.submit(ITEM)
    assert d.flush(120)
    conveyor_rate = n / (time.perf_counter() - t0)
    d.close()
    assert server.count() - before == n
    before = server.count()
    seed = Seed(server.url)
    t0 = time.perf_counter()
    for _ in range(n):
        seed.submit(ITEM)
    seed.queue.join()
    seed_rate = n / (time.perf_counter() - t0)
    seed.close()
    assert server.count() - before == n
    return conveyor_rate, seed_rate


def cpu_over(window: float) -> float:
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(window)
    return (time.process_time() - c0) / (time.perf_counter() - t0) * 100


def bench_down(n: int, window: float) -> tuple[float, float, float]:
    url = dead_url()
    d = Dispatcher(HTTPTransport(url), retry=Retry(initial=0.5, maximum=30, deadline=600))
    for _ in range(n):
        d.submit(ITEM)
    time.sleep(0.5)  # let the breaker open
    conveyor_cpu = cpu_over(window)
    d.close(0.1)
    seeds = []
    for pause in (None, 1.0):
        seed = Seed(url, pause=pause)
        for _ in range(n):
            seed.submit(ITEM)
        time.sleep(0.5)
        seeds.append(cpu_over(window))
        seed.close()
    return conveyor_cpu, seeds[0], seeds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    add_publish_option(parser)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    rounds = 1 if args.quick else args.rounds
    n_submit = 20_000 if args.quick else 200_000
    n_deliver = 2_000 if args.quick else 20_000
    window = 1.0 if args.quick else 3.0
    print(environment())
    server = LocalServer()
    try:
        sub_c, sub_q, thr_c, thr_s, cpu_c, cpu_s0, cpu_s1 = ([] for _ in range(7))
        for _ in range(rounds):
            a, b = bench_submit(server.url, n_submit)
            sub_c.append(a)
            sub_q.append(b)
            a, b = bench_throughput(server, n_deliver)
            thr_c.append(a)
            thr_s.append(b)
            a, b, c = bench_down(1000, window)
            cpu_c.append(a)
            cpu_s0.append(b)
            cpu_s1.append(c)
    finally:
        server.close()
    rows = [
        ("submit() in the caller, ns/call", "Dispatcher.submit", summarize(sub_c).fmt(0)),
        ("", "seed: queue.Queue.put_nowait", summarize(sub_q).fmt(0)),
        (
            "delivered items/s, local HTTP",
            "Dispatcher (batches <= 500, gzip)",
            summarize(thr_c).fmt(0),
        ),
        ("", "seed: 8 threads, 1 POST per item", summarize(thr_s).fmt(0)),
        ("CPU % of a core, endpoint down", "Dispatcher (breaker open)", summarize(cpu_c).fmt(1)),
        ("", "seed: retry at once", summarize(cpu_s0).fmt(1)),
        ("", "seed: retry after 1 s sleep", summarize(cpu_s1).fmt(1)),
    ]
    params = f"rounds: {rounds}; submit n={n_submit}, delivery n={n_deliver}, CPU window {window} s"
    print(f"# {params}")
    with capture() as printed:
        print(table(("measure", "variant", "median [min-max]"), rows))
    if wants_publish(args):
        figure = Figure(
            "delivery",
            "Delivery: conveyor's Dispatcher against the seed's design (queue.Queue + threads)",
            [
                Panel(
                    "enqueue in the caller's thread (submit() while the workers send; "
                    "put_nowait with no consumer)",
                    "ns per call",
                    [
                        Bar("Dispatcher.submit", sub_c, "conveyor"),
                        Bar("seed: queue.Queue.put_nowait", sub_q),
                    ],
                ),
                Panel(
                    "delivered to a local HTTP server",
                    "items/s",
                    [
                        Bar("Dispatcher (batches <= 500, gzip)", thr_c, "conveyor"),
                        Bar("seed: 8 threads, 1 POST per item", thr_s),
                    ],
                    better="higher",
                ),
                Panel(
                    "CPU while the endpoint is down (1,000 items queued)",
                    "% of one core",
                    [
                        Bar("Dispatcher (breaker open)", cpu_c, "conveyor"),
                        Bar("seed: retry at once", cpu_s0),
                        Bar("seed: retry after 1 s sleep", cpu_s1),
                    ],
                ),
            ],
        )
        publish(
            "delivery",
            "bench/delivery/delivery.py",
            sys.argv[1:],
            load_start,
            [figure],
            printed.getvalue(),
            params=params,
            code=DELIVERY_CODE,
        )


if __name__ == "__main__":
    main()
