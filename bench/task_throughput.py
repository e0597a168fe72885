"""Throughput of concurrent text-to-image requests with batching on vs. off, and the task path's cost per task.

Part 1, batching. Two fresh server subprocesses (``qwen-image-server serve``, demo preset, serving only
``qwen-image-2.0``, whose tiny demo model runs 2 denoising steps) start with the same environment but for
``QIS_MAX_BATCH_SIZE``: N for "on", 1 for "off" (rate limits off, a queue bound well above N). Both stay up for
the whole run, but only one gets requests at any moment. A round fires N single-image sync requests
(``POST /api/v1/services/aigc/multimodal-generation/generation``) at one server at once and times until the last
one answers; images/s = N / that wall time. Rounds alternate between the two servers, the order flipping each
round, and the table shows medians over rounds with the ratio on/off: above 1, batching pays off on this machine.
The mean batch size is each server's own ``qwen_image_server_batch_size`` histogram over the measured rounds
(warm-up excluded). It stays below N with batching on when the idle worker claims the first request before the
others have been stored: that one runs alone, and the others wait for it and then share one pipeline call.

Part 2, queue overhead. On the batching-off server, S sequential requests, with a ``/metrics`` scrape after each,
so every request's end-to-end time (client side) pairs with its own task's ``task_running_seconds`` (from the
worker's claim to the result stored: decoding, inference, PNG encoding and storing, completion). The per-request
difference is what the task path adds around that: HTTP, validation, the task's SQLite insert, the worker's wake-up
and claim, and the waiting request's wake-up and answer. Pairing keeps inference noise out of it, which matters on
a busy machine: a median of one column minus a mean of the other can even come out negative.
``task_queued_seconds`` (stored to claimed) is shown as one part of the overhead.
Last, the SQLite task store alone, in this process: create, claim and succeed of T tasks in a temporary
directory, in ms per task. The store runs with ``synchronous=FULL``, so this is mostly fsyncs of that disk.

Both servers preload jemalloc where installed (Debian's ``libjemalloc2``), as ``bench/edit_latency.py`` does.
The demo models are reused from ``QIS_DEMO_MODELS_DIR``, else the tests' cache, else built in a scratch dir.

    python bench/task_throughput.py --requests 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from servers import ENVIRONMENT, JEMALLOC, free_port, wait_until_ready

from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.registry import DEMO_STEPS
from qwen_image_server.keys import KeyStore
from qwen_image_server.tasks.models import Job, NewTask, TaskMode
from qwen_image_server.tasks.sqlite import SqliteTaskStore

MODEL = "qwen-image-2.0"
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
METRIC = "qwen_image_server_"
READY_TIMEOUT_SECONDS = 600
REQUEST_TIMEOUT_SECONDS = 600
TEST_DEMO_MODELS = Path.home() / ".cache" / "qwen-image-server" / "test-demo-models"

@dataclass
class Server:
    name: str
    max_batch: int
    process: subprocess.Popen
    url: str
    key: str
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, max_batch: int, scratch: Path, demo_dir: Path, max_pending: int) -> Server:
    """Starts one server subprocess with its own data dir and API key; returns without waiting for readiness."""
    data_dir = scratch / f"data-{name}"
    key = KeyStore(data_dir / "server.db").create("bench")
    port = free_port()
    environment = {**ENVIRONMENT, "QIS_DEMO_MODELS_DIR": str(demo_dir), "QIS_MAX_BATCH_SIZE": str(max_batch),
                   "QIS_RATE_LIMITS_ENABLED": "false", "QIS_MAX_PENDING_TASKS": str(max_pending)}
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--models", MODEL]
    log = scratch / f"server-{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    return Server(name, max_batch, process, f"http://127.0.0.1:{port}", key, log)


def request_body(index: int, size: str) -> dict:
    return {"model": MODEL,
            "input": {"messages": [{"role": "user", "content": [{"text": f"a lighthouse at dusk, study {index}"}]}]},
            "parameters": {"size": size, "prompt_extend": False}}


def check_response(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"request failed: {response.status_code} {response.text[:500]}")
    content = response.json()["output"]["choices"][0]["message"]["content"]
    if len(content) != 1 or "image" not in content[0]:
        raise RuntimeError(f"unexpected response: {response.text[:500]}")


async def fire(server: Server, count: int, size: str) -> float:
    """Sends ``count`` sync requests at once; returns the seconds until the last one has answered."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits,
                                 headers={"Authorization": f"Bearer {server.key}"}) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post(GENERATION_PATH, json=request_body(index, size))
                                           for index in range(count)))
        seconds = time.perf_counter() - started
    for response in responses:
        check_response(response)
    return seconds


def scrape(server: Server) -> dict[str, float]:
    """The server's metric samples by name (``_bucket`` samples keyed ``name{le}``), summed over other labels."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    samples: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name + (f"{{{sample.labels['le']}}}" if "le" in sample.labels else "")
            samples[name] += sample.value
    return samples


def histogram_mean(before: dict[str, float], after: dict[str, float], name: str) -> tuple[float, int]:
    """The mean and count of the observations a histogram got between two scrapes."""
    count = int(after[f"{METRIC}{name}_count"] - before[f"{METRIC}{name}_count"])
    total = after[f"{METRIC}{name}_sum"] - before[f"{METRIC}{name}_sum"]
    return (total / count if count else float("nan")), count


def sequential(server: Server, count: int, size: str) -> list[float]:
    """Sends ``count`` sync requests one after another; returns each one's end-to-end seconds."""
    timings = []
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS,
                      headers={"Authorization": f"Bearer {server.key}"}) as client:
        for index in range(count):
            started = time.perf_counter()
            response = client.post(GENERATION_PATH, json=request_body(index, size))
            timings.append(time.perf_counter() - started)
            check_response(response)
    return timings


@dataclass
class Overhead:
    """One sequential request: its end-to-end seconds and what the server's histograms got for its task."""

    end_to_end: float
    running: float
    queued: float


def overhead_samples(server: Server, count: int, size: str) -> list[Overhead]:
    """Sequential requests with a scrape around each, so each task's running and queued seconds are its own."""
    samples = []
    before = scrape(server)
    for _ in range(count):
        [end_to_end] = sequential(server, 1, size)
        after = scrape(server)
        running, tasks = histogram_mean(before, after, "task_running_seconds")
        queued, _ = histogram_mean(before, after, "task_queued_seconds")
        if tasks != 1:
            raise RuntimeError(f"expected one task in the metrics between two scrapes, got {tasks}")
        samples.append(Overhead(end_to_end, running, queued))
        before = after
    return samples


@contextmanager
def timed(totals: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    totals[step] += time.perf_counter() - started


def store_timings(directory: Path, count: int) -> dict[str, float]:
    """Seconds spent in each store step over ``count`` tasks, run one after another as one worker would."""
    store = SqliteTaskStore(directory / "server.db")
    totals: dict[str, float] = defaultdict(float)
    for index in range(count):
        task_id = str(uuid.uuid4())
        job = Job(model=MODEL, prompt=f"a lighthouse at dusk, study {index}", width=512, height=512, seed=index)
        task = NewTask(task_id, "bench-key", task_id, TaskMode.SYNC, job, [], job.batch_key(True))
        with timed(totals, "create"):
            assert store.create(task, max_pending=count + 1)
        with timed(totals, "claim"):
            claimed = store.claim("bench-worker", 30.0, 1)
        assert [record.task_id for record in claimed] == [task_id]
        with timed(totals, "succeed"):
            assert store.succeed(task_id, "bench-worker", [f"{uuid.UUID(task_id).hex}-0.png"], None)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per round (N)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating")
    parser.add_argument("--batch-size", type=int, help="QIS_MAX_BATCH_SIZE of the batching server (default: N)")
    parser.add_argument("--size", default="512*512", help="output size of every request")
    parser.add_argument("--sequential", type=int, default=5, help="sequential requests for the overhead part")
    parser.add_argument("--store-tasks", type=int, default=200, help="tasks for the SQLite store part")
    arguments = parser.parse_args()
    count, size = arguments.requests, arguments.size
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        default_demo_dir = TEST_DEMO_MODELS if TEST_DEMO_MODELS.is_dir() else scratch / "demo-models"
        demo_dir = Path(os.environ.get("QIS_DEMO_MODELS_DIR", default_demo_dir))
        build_demo_models(demo_dir)  # a no-op when built; else once here rather than racing in both servers
        max_pending = max(64, 4 * count)
        servers: list[Server] = []
        try:
            for name, max_batch in (("on", arguments.batch_size or count), ("off", 1)):
                servers.append(start_server(name, max_batch, scratch, demo_dir, max_pending))
            for server in servers:
                wait_until_ready(server.url, server.process, READY_TIMEOUT_SECONDS, server.log_tail)
            for server in servers:
                sequential(server, 1, size)  # warm-up
            before = {server.name: scrape(server) for server in servers}
            walls: dict[str, list[float]] = {server.name: [] for server in servers}
            for round_index in range(arguments.rounds):
                for server in servers if round_index % 2 == 0 else reversed(servers):
                    walls[server.name].append(asyncio.run(fire(server, count, size)))
            after = {server.name: scrape(server) for server in servers}

            overheads = overhead_samples(servers[1], arguments.sequential, size)
        finally:
            for server in servers:
                server.stop()
        store = store_timings(scratch, arguments.store_tasks)
    elapsed = time.perf_counter() - started

    cores = len(os.sched_getaffinity(0))
    print(f"text-to-image, {MODEL} demo ({DEMO_STEPS} steps), size {size}, {count} concurrent single-image sync "
          f"requests per round, {arguments.rounds} rounds per server, alternating; {cores} CPU cores\n")
    print("| batching | QIS_MAX_BATCH_SIZE | median wall s | median images/s | min images/s | max images/s "
          "| mean batch size | pipeline calls per round |")
    print("|---|---|---|---|---|---|---|---|")
    rates = {}
    for server in servers:
        rate = [count / wall for wall in walls[server.name]]
        rates[server.name] = statistics.median(rate)
        mean_batch, batches = histogram_mean(before[server.name], after[server.name], "batch_size")
        print(f"| {server.name} | {server.max_batch} | {statistics.median(walls[server.name]):.3f} "
              f"| {rates[server.name]:.3f} | {min(rate):.3f} | {max(rate):.3f} | {mean_batch:.2f} "
              f"| {batches / arguments.rounds:.1f} |")
    print(f"\nthroughput ratio on/off (median images/s): {rates['on'] / rates['off']:.3f}")

    print(f"\nqueue overhead per task: batching-off server, {arguments.sequential} sequential requests; "
          "server times per task from /metrics deltas around each request\n")
    print("| measure | median s | mean s | min s | max s |")
    print("|---|---|---|---|---|")
    rows = (("end-to-end, client side", [sample.end_to_end for sample in overheads]),
            ("task_running_seconds (claim to result stored)", [sample.running for sample in overheads]),
            ("overhead = end-to-end - running, per request",
             [sample.end_to_end - sample.running for sample in overheads]),
            ("of which task_queued_seconds (stored to claimed)", [sample.queued for sample in overheads]))
    for name, values in rows:
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.mean(values):.3f} | {min(values):.3f} "
              f"| {max(values):.3f} |")

    tasks = arguments.store_tasks
    print(f"\nSQLite task store alone, in-process, {tasks} tasks one after another (synchronous=FULL, WAL)\n")
    print("| step | ms per task |")
    print("|---|---|")
    for step in ("create", "claim", "succeed"):
        print(f"| {step} | {1000 * store[step] / tasks:.2f} |")
    print(f"| create + claim + succeed | {1000 * sum(store.values()) / tasks:.2f} |")
    print(f"\nallocator: {'jemalloc (LD_PRELOAD), both servers' if JEMALLOC.exists() else 'glibc malloc'}; "
          f"run time {elapsed:.0f} s (after imports)")


if __name__ == "__main__":
    main()
