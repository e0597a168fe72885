"""Steady load within a budget, then overload at several times capacity and the recovery after it.

Steady: ``clients`` threads, each a closed loop with its own httpx client for ``seconds``: a sync
text-to-image request (``qwen-image-2.0``, 512*512), an async one followed by GETs of its task until it
ends, and a cheap ``GET /api/v1/tasks/{id}`` and ``/healthz`` in between. Reports requests, throughput,
p50/p95 per kind and the error ratio (anything but the expected 200).

Overload: a server with a small queue (``max_pending_tasks``) gets ``burst`` async submissions from
``burst`` threads at once, several times what it can hold. Only 200 and 429 ``Throttling`` with
``Retry-After`` in the API's error format are acceptable; every answer must come fast (no timeouts). Then the
recovery: seconds from the end of the burst until the queue is empty and a new submission succeeds.

    python bench/load.py --clients 4 --seconds 60 --burst 64 --max-pending 4

``tests/reliability/test_load.py`` runs short versions of both.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import (
    ASYNC,
    DEFAULT_DEMO_MODELS,
    GENERATION,
    SYNTHESIS,
    ServerProcess,
    environment_settings,
    generation,
    synthesis,
)
from qwen_image_server.keys import KeyStore


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, started: float, response: httpx.Response | None, error: str | None = None) -> None:
        with self.lock:
            self.latencies[kind].append(time.perf_counter() - started)
            self.statuses[response.status_code if response is not None else "transport"] += 1
            if error:
                self.errors.append(f"{kind}: {error}")

    @property
    def requests(self) -> int:
        return sum(len(values) for values in self.latencies.values())

    @property
    def error_ratio(self) -> float:
        return len(self.errors) / max(1, self.requests)

    def percentile(self, kind: str, q: float) -> float:
        values = sorted(self.latencies[kind])
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def timed(client: httpx.Client, tally: Tally, kind: str, method: str, path: str, expected=(200,), **kwargs):
    started = time.perf_counter()
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as error:
        tally.record(kind, started, None, f"{type(error).__name__}")
        return None
    tally.record(kind, started, response,
                 None if response.status_code in expected else f"{response.status_code} {response.text[:200]}")
    return response


def run_concurrently(work: Callable[[], None], threads: int) -> float:
    """Runs ``work`` in that many threads at once; the seconds until the last one ends."""
    running = [threading.Thread(target=work) for _ in range(threads)]
    started = time.perf_counter()
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return time.perf_counter() - started


def steady(url: str, key: str, clients: int, seconds: float) -> Tally:
    """Closed-loop clients for ``seconds``; each loop is sync, async + polls, and cheap GETs."""
    tally = Tally()
    deadline = time.monotonic() + seconds

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:
            while time.monotonic() < deadline:
                timed(client, tally, "sync 512*512", "POST", GENERATION, json=generation(f"steady {uuid.uuid4()}"))
                submitted = timed(client, tally, "async submit", "POST", SYNTHESIS, headers=ASYNC,
                                  json=synthesis(f"steady {uuid.uuid4()}"))
                if submitted is None or submitted.status_code != 200:
                    continue
                task_path = f"/api/v1/tasks/{submitted.json()['output']['task_id']}"
                while time.monotonic() < deadline + 120:
                    polled = timed(client, tally, "task GET", "GET", task_path)
                    if polled is None or polled.json()["output"]["task_status"] in ("SUCCEEDED", "FAILED"):
                        if polled is not None and polled.json()["output"]["task_status"] == "FAILED":
                            tally.errors.append(f"task failed: {polled.text[:200]}")
                        break
                    timed(client, tally, "healthz", "GET", "/healthz")
                    time.sleep(0.1)

    tally.seconds = run_concurrently(loop, clients)
    return tally


@dataclass
class Overload:
    tally: Tally
    burst: int
    capacity: int  # what the server holds at once: its queue bound plus the task its worker runs
    bad_throttles: list[str]
    recovery_seconds: float


def overload(url: str, key: str, burst: int, capacity: int, recovery_timeout: float = 300) -> Overload:
    """``burst`` async submissions at once from as many threads; then waits for the queue to drain."""
    tally, bad = Tally(), []
    gate = threading.Barrier(burst)

    def submit() -> None:
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            gate.wait()
            response = timed(client, tally, "burst submit", "POST", SYNTHESIS, expected=(200, 429), headers=ASYNC,
                             json=synthesis(f"burst {uuid.uuid4()}"))
            if response is not None and response.status_code == 429:
                body = response.json()
                if not (body.get("code") == "Throttling" and body.get("message") and body.get("request_id")
                        and int(response.headers.get("Retry-After", "0")) >= 1):
                    bad.append(response.text[:200])

    tally.seconds = run_concurrently(submit, burst)
    ended = time.monotonic()
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        while time.monotonic() - ended < recovery_timeout:
            if queue_depth(client) == 0:
                response = client.post(SYNTHESIS, headers=ASYNC, json=synthesis("after the burst"))
                if response.status_code == 200:
                    break
            time.sleep(0.1)
        recovery = time.monotonic() - ended
    return Overload(tally, burst, capacity, bad, recovery)


def queue_depth(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("qwen_image_server_queue_depth"):
            return float(line.split()[-1])
    raise LookupError("no queue depth metric")


def print_steady(tally: Tally, clients: int) -> None:
    print(f"\nSteady: {clients} clients, {tally.seconds:.0f} s, {tally.requests} requests, "
          f"{tally.requests / tally.seconds:.1f} req/s, error ratio {tally.error_ratio:.3f}, "
          f"statuses {dict(tally.statuses)}")
    print("| kind | requests | per s | p50 (ms) | p95 (ms) |\n|---|---|---|---|---|")
    for kind, values in tally.latencies.items():
        print(f"| {kind} | {len(values)} | {len(values) / tally.seconds:.2f} | "
              f"{1000 * statistics.median(values):.0f} | {1000 * tally.percentile(kind, 0.95):.0f} |")


def print_overload(result: Overload) -> None:
    tally = result.tally
    print(f"\nOverload: {result.burst} submissions at once against a capacity of {result.capacity} "
          f"({result.burst / result.capacity:.0f}x)")
    print("| 200 | 429 | other | p50 (ms) | p95 (ms) | max (ms) | bad 429 bodies | recovery (s) |")
    print("|---|---|---|---|---|---|---|---|")
    values = tally.latencies["burst submit"]
    other = sum(count for status, count in tally.statuses.items() if status not in (200, 429))
    print(f"| {tally.statuses[200]} | {tally.statuses[429]} | {other} | {1000 * statistics.median(values):.0f} | "
          f"{1000 * tally.percentile('burst submit', 0.95):.0f} | {1000 * max(values):.0f} | "
          f"{len(result.bad_throttles)} | {result.recovery_seconds:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--max-pending", type=int, default=4)
    parser.add_argument("--demo-models", type=Path, default=DEFAULT_DEMO_MODELS)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="load-") as scratch:
        data_dir = Path(scratch) / "data"
        key = KeyStore(data_dir / "server.db").create("load")
        server = ServerProcess(data_dir, arguments.demo_models, Path(scratch) / "server.log",
                               environment_settings(max_pending_tasks=arguments.max_pending))
        server.start()
        try:
            tally = steady(server.url, key, arguments.clients, arguments.seconds)
            print_steady(tally, arguments.clients)
            result = overload(server.url, key, arguments.burst, arguments.max_pending + 1)
            print_overload(result)
        finally:
            server.stop(signal.SIGTERM)
    return 0 if not tally.errors and not result.tally.errors and not result.bad_throttles else 1


if __name__ == "__main__":
    sys.exit(main())
