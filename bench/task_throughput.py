"""Throughput of concurrent requests with batching on vs. off, and the task path's cost per task.

Part 1, batching. Two fresh server subprocesses (``qwen-image-server serve``, demo preset, serving one model)
start with the same environment but for ``QIS_MAX_BATCH_SIZE``: N for "on", 1 for "off" (rate limits off, a
queue bound well above N); "on" also collects a burst for ``--collect`` seconds before claiming it. ``--kind
t2i`` (default) sends text-to-image requests to ``qwen-image-2.0``; ``--kind edit`` sends single-image edits of
one 512x512 input to ``qwen-image-edit-plus`` (true CFG), which batch across requests in our own steps. Both stay up for
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
    python bench/task_throughput.py --kind edit --requests 4 --rounds 5
    python bench/task_throughput.py --quick       # what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
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
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

if __package__ in (None, ""):  # run as ``python bench/task_throughput.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.servers import ENVIRONMENT, JEMALLOC, free_port, wait_until_ready
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.registry import DEMO_STEPS
from qwen_image_server.keys import KeyStore
from qwen_image_server.tasks.models import Job, NewTask, Quota, TaskMode
from qwen_image_server.tasks.sqlite import SqliteTaskStore

MODELS = {"t2i": "qwen-image-2.0", "edit": "qwen-image-edit-plus"}
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


def start_server(name: str, max_batch: int, scratch: Path, demo_dir: Path, max_pending: int, model: str,
                 collect: float) -> Server:
    """Starts one server subprocess with its own data dir and API key; returns without waiting for readiness."""
    data_dir = scratch / f"data-{name}"
    key = KeyStore(data_dir / "server.db").create("bench")
    port = free_port()
    environment = {**ENVIRONMENT, "QIS_DEMO_MODELS_DIR": str(demo_dir), "QIS_MAX_BATCH_SIZE": str(max_batch),
                   "QIS_RATE_LIMITS_ENABLED": "false", "QIS_MAX_PENDING_TASKS": str(max_pending),
                   "QIS_MAX_PENDING_TASKS_PER_KEY": str(max_pending), "QIS_BATCH_COLLECT_SECONDS": str(collect)}
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--models", model]
    log = scratch / f"server-{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    return Server(name, max_batch, process, f"http://127.0.0.1:{port}", key, log)


def input_image() -> str:
    """One 512x512 gradient PNG, as a data URI: every edit of a round edits the same input."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((512, 512)).convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


INPUT = input_image()


def request_body(kind: str, index: int, size: str) -> dict:
    content: list[dict[str, str]] = [{"image": INPUT}] if kind == "edit" else []
    content.append({"text": f"a lighthouse at dusk, study {index}"})
    return {"model": MODELS[kind], "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": {"size": size, "prompt_extend": False}}


def check_response(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"request failed: {response.status_code} {response.text[:500]}")
    content = response.json()["output"]["choices"][0]["message"]["content"]
    if len(content) != 1 or "image" not in content[0]:
        raise RuntimeError(f"unexpected response: {response.text[:500]}")


async def fire(server: Server, kind: str, count: int, size: str) -> float:
    """Sends ``count`` sync requests at once; returns the seconds until the last one has answered."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS, limits=limits,
                                 headers={"Authorization": f"Bearer {server.key}"}) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(client.post(GENERATION_PATH, json=request_body(kind, index, size))
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


def sequential(server: Server, kind: str, count: int, size: str) -> list[float]:
    """Sends ``count`` sync requests one after another; returns each one's end-to-end seconds."""
    timings = []
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_SECONDS,
                      headers={"Authorization": f"Bearer {server.key}"}) as client:
        for index in range(count):
            started = time.perf_counter()
            response = client.post(GENERATION_PATH, json=request_body(kind, index, size))
            timings.append(time.perf_counter() - started)
            check_response(response)
    return timings


@dataclass
class Overhead:
    """One sequential request: its end-to-end seconds and what the server's histograms got for its task."""

    end_to_end: float
    running: float
    queued: float


def overhead_samples(server: Server, kind: str, count: int, size: str) -> list[Overhead]:
    """Sequential requests with a scrape around each, so each task's running and queued seconds are its own."""
    samples = []
    before = scrape(server)
    for _ in range(count):
        [end_to_end] = sequential(server, kind, 1, size)
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
        job = Job(model=MODELS["t2i"], prompt=f"a lighthouse at dusk, study {index}", width=512, height=512,
                  seed=index)
        task = NewTask(task_id, "bench-key", task_id, TaskMode.SYNC, job, [], None)
        with timed(totals, "create"):
            assert store.create(task, Quota(count + 1)) is None
        with timed(totals, "claim"):
            claimed = store.claim("bench-worker", 30.0, 1)
        assert [record.task_id for record in claimed] == [task_id]
        with timed(totals, "succeed"):
            assert store.succeed(task_id, "bench-worker", [f"{uuid.UUID(task_id).hex}-0.png"], None)
    return totals


@dataclass
class Options:
    kind: str = "t2i"
    requests: int = 8
    rounds: int = 3
    batch_size: int | None = None
    collect: float = 0.05
    size: str = "512*512"
    sequential: int = 5
    store_tasks: int = 200


QUICK = Options(requests=2, rounds=1, sequential=1, store_tasks=5)


@dataclass
class Report:
    options: Options
    servers: list[Server]
    walls: dict[str, list[float]]
    batches: dict[str, tuple[float, int]]  # mean batch size and number of batches, per server
    overheads: list[Overhead]
    store: dict[str, float]
    elapsed: float

    def rates(self, name: str) -> list[float]:
        return [self.options.requests / wall for wall in self.walls[name]]

    @property
    def ratio(self) -> float:
        return statistics.median(self.rates("on")) / statistics.median(self.rates("off"))


def run(options: Options, demo_dir: Path | None = None) -> Report:
    count, size, kind = options.requests, options.size, options.kind
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        default_demo_dir = TEST_DEMO_MODELS if TEST_DEMO_MODELS.is_dir() else scratch / "demo-models"
        demo_dir = demo_dir or Path(os.environ.get("QIS_DEMO_MODELS_DIR", default_demo_dir))
        build_demo_models(demo_dir)  # a no-op when built; else once here rather than racing in both servers
        max_pending = max(64, 4 * count)
        servers: list[Server] = []
        try:
            for name, max_batch, collect in (("on", options.batch_size or count, options.collect), ("off", 1, 0.0)):
                servers.append(start_server(name, max_batch, scratch, demo_dir, max_pending, MODELS[kind], collect))
            for server in servers:
                wait_until_ready(server.url, server.process, READY_TIMEOUT_SECONDS, server.log_tail)
            for server in servers:
                sequential(server, kind, 1, size)  # warm-up
            before = {server.name: scrape(server) for server in servers}
            walls: dict[str, list[float]] = {server.name: [] for server in servers}
            for round_index in range(options.rounds):
                for server in servers if round_index % 2 == 0 else reversed(servers):
                    walls[server.name].append(asyncio.run(fire(server, kind, count, size)))
            after = {server.name: scrape(server) for server in servers}
            batches = {server.name: histogram_mean(before[server.name], after[server.name], "batch_size")
                       for server in servers}
            overheads = overhead_samples(servers[1], kind, options.sequential, size)
        finally:
            for server in servers:
                server.stop()
        store = store_timings(scratch, options.store_tasks)
    return Report(options, servers, walls, batches, overheads, store, time.perf_counter() - started)


def print_report(report: Report) -> None:
    options, count = report.options, report.options.requests
    what = "single-image edits of one 512x512 input" if options.kind == "edit" else "text-to-image requests"
    cores = len(os.sched_getaffinity(0))
    print(f"{MODELS[options.kind]} demo ({DEMO_STEPS} steps), size {options.size}, {count} concurrent sync {what} "
          f"per round, {options.rounds} rounds per server, alternating; {cores} CPU cores\n")
    print("| batching | QIS_MAX_BATCH_SIZE | median wall s | median images/s | min images/s | max images/s "
          "| mean batch size | engine runs per round |")
    print("|---|---|---|---|---|---|---|---|")
    for server in report.servers:
        rate = report.rates(server.name)
        mean_batch, batches = report.batches[server.name]
        print(f"| {server.name} | {server.max_batch} | {statistics.median(report.walls[server.name]):.3f} "
              f"| {statistics.median(rate):.3f} | {min(rate):.3f} | {max(rate):.3f} | {mean_batch:.2f} "
              f"| {batches / options.rounds:.1f} |")
    print(f"\nthroughput ratio on/off (median images/s): {report.ratio:.3f}")

    print(f"\nqueue overhead per task: batching-off server, {options.sequential} sequential requests; "
          "server times per task from /metrics deltas around each request\n")
    print("| measure | median s | mean s | min s | max s |")
    print("|---|---|---|---|---|")
    overheads = report.overheads
    rows = (("end-to-end, client side", [sample.end_to_end for sample in overheads]),
            ("task_running_seconds (claim to result stored)", [sample.running for sample in overheads]),
            ("overhead = end-to-end - running, per request",
             [sample.end_to_end - sample.running for sample in overheads]),
            ("of which task_queued_seconds (stored to claimed)", [sample.queued for sample in overheads]))
    for name, values in rows:
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.mean(values):.3f} | {min(values):.3f} "
              f"| {max(values):.3f} |")

    tasks = options.store_tasks
    print(f"\nSQLite task store alone, in-process, {tasks} tasks one after another (synchronous=FULL, WAL)\n")
    print("| step | ms per task |")
    print("|---|---|")
    for step in ("create", "claim", "succeed"):
        print(f"| {step} | {1000 * report.store[step] / tasks:.2f} |")
    print(f"| create + claim + succeed | {1000 * sum(report.store.values()) / tasks:.2f} |")
    print(f"\nallocator: {'jemalloc (LD_PRELOAD), both servers' if JEMALLOC.exists() else 'glibc malloc'}; "
          f"run time {report.elapsed:.0f} s (after imports)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(MODELS), default="t2i")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per round (N)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating")
    parser.add_argument("--batch-size", type=int, help="QIS_MAX_BATCH_SIZE of the batching server (default: N)")
    parser.add_argument("--collect", type=float, default=0.05, help="QIS_BATCH_COLLECT_SECONDS of that server")
    parser.add_argument("--size", default="512*512", help="output size of every request")
    parser.add_argument("--sequential", type=int, default=5, help="sequential requests for the overhead part")
    parser.add_argument("--store-tasks", type=int, default=200, help="tasks for the SQLite store part")
    parser.add_argument("--quick", action="store_true", help="two requests, one round: checks the script works")
    arguments = parser.parse_args()
    options = replace(QUICK, kind=arguments.kind) if arguments.quick else Options(
        arguments.kind, arguments.requests, arguments.rounds, arguments.batch_size, arguments.collect, arguments.size,
        arguments.sequential, arguments.store_tasks)
    print_report(run(options))


if __name__ == "__main__":
    main()
