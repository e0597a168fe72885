"""SIGKILL the server again and again, at random moments, while tasks are queued, running and being submitted.

One data directory, one server subprocess at a time (one CPU worker, whose name is unique to its start). Each
cycle starts the server, submits async text-to-image tasks (``qwen-image-2.0``, most 512*512, one in four
1024*1024 so that a kill often lands mid-pipeline) from a thread, and after a random delay sends SIGKILL
while the submitter keeps going. Meanwhile a sampler reads the task table every 50 ms (WAL readers never block
the server). After the last cycle a final server drains the queue and stops with SIGTERM. Then:

- lost: an acknowledged task (its submission got 200 and a task id) that is missing, or did not end SUCCEEDED
  or FAILED with a reason; checked right after every kill too (the row must already be there);
- stuck: any row still PENDING or RUNNING after the drain;
- double: a task taken over by a new owner while its previous owner's process was still alive (from the
  sampler: each change of owner is checked against the previous owner's process end and the new claim's
  ``started_at``); every owner must also be a worker some start logged;
- every SUCCEEDED task's result file exists.

    python bench/crash_loop.py --cycles 50

prints one row per cycle and a summary. ``tests/reliability/test_crash_loop.py`` runs a few cycles of the same.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import ASYNC, DEFAULT_DEMO_MODELS, SYNTHESIS, ServerProcess, environment_settings, synthesis
from qwen_image_server.keys import KeyStore
from qwen_image_server.tasks.sqlite import SqliteTaskStore

FINISHED = ("SUCCEEDED", "FAILED", "CANCELED")


@dataclass
class Cycle:
    seconds_to_kill: float
    acknowledged: int
    pending_at_kill: int
    running_at_kill: int
    missing_after_kill: int


@dataclass
class Report:
    cycles: list[Cycle] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    states: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # error_code: message, for FAILED tasks
    attempts: Counter = field(default_factory=Counter)  # final attempt count -> tasks
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    double: list[str] = field(default_factory=list)
    unknown_owners: list[str] = field(default_factory=list)
    missing_results: list[str] = field(default_factory=list)
    owner_changes: int = 0
    drain_seconds: float = 0.0
    seconds: float = 0.0


class Sampler(threading.Thread):
    """Records every (task, attempt, worker, started_at) it sees RUNNING, with the time it saw it."""

    def __init__(self, database: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.database, self.interval = database, interval
        self.seen: dict[str, list[tuple[int, str, float]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        while not self.stopping.wait(self.interval):
            for task_id, attempt, worker, started_at in db.execute(
                    "SELECT task_id, attempt, worker, started_at FROM tasks WHERE state = 'RUNNING'"):
                owners = self.seen.setdefault(task_id, [])
                if not owners or owners[-1][:2] != (attempt, worker):
                    owners.append((attempt, worker, started_at))
        db.close()


class Submitter(threading.Thread):
    def __init__(self, url: str, key: str, rng: random.Random, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.rng, self.interval = url, key, rng, interval
        self.acknowledged: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers={"Authorization": f"Bearer {self.key}"}) as client:
            while not self.stopping.wait(self.interval):
                size = "1024*1024" if self.rng.random() < 0.25 else "512*512"
                try:
                    response = client.post(SYNTHESIS, headers=ASYNC, json=synthesis(f"crash {uuid.uuid4()}", size))
                except httpx.TransportError:
                    continue  # killed mid-request: not acknowledged, whatever the store holds
                if response.status_code == 200:
                    self.acknowledged.append(response.json()["output"]["task_id"])


def counts(database: Path) -> dict[str, int]:
    with sqlite3.connect(database) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall())


def crash_loop(scratch: Path, demo_models_dir: Path, cycles: int, seed: int = 0, kill_window: tuple[float, float] = (
        0.5, 4.0), lease_seconds: float = 2.0, max_attempts: int = 3, max_pending: int = 8,
               submit_interval: float = 0.2, drain_timeout: float = 600,
               on_cycle=lambda index, cycle: None) -> Report:
    """Runs the kill cycles and the final drain over a fresh data directory under ``scratch``."""
    rng = random.Random(seed)
    data_dir = scratch / "data"
    key = KeyStore(data_dir / "server.db").create("crash-loop")
    database = data_dir / "server.db"
    SqliteTaskStore(database)  # the schema, so the sampler can read from the start
    server = ServerProcess(data_dir, demo_models_dir, scratch / "server.log", environment_settings(
        task_lease_seconds=lease_seconds, task_max_attempts=max_attempts, max_pending_tasks=max_pending,
        task_poll_seconds=0.2))
    report = Report()
    sampler = Sampler(database)
    sampler.start()
    began = time.monotonic()
    try:
        for index in range(cycles):
            server.start()
            submitter = Submitter(server.url, key, rng, submit_interval)
            submitter.start()
            delay = rng.uniform(*kill_window)
            time.sleep(delay)
            before = counts(database)
            server.stop(signal.SIGKILL)
            submitter.stopping.set()
            submitter.join()
            report.acknowledged.update(submitter.acknowledged)
            with sqlite3.connect(database) as db:
                stored = {row[0] for row in db.execute("SELECT task_id FROM tasks")}
            cycle = Cycle(delay, len(submitter.acknowledged), before.get("PENDING", 0), before.get("RUNNING", 0),
                          len(set(submitter.acknowledged) - stored))
            report.cycles.append(cycle)
            on_cycle(index, cycle)
        server.start()
        drained = time.monotonic()
        deadline = drained + drain_timeout
        while time.monotonic() < deadline and (counts(database).keys() - set(FINISHED)):
            time.sleep(0.2)
        report.drain_seconds = time.monotonic() - drained
        server.stop(signal.SIGTERM)
    finally:
        sampler.stopping.set()
        sampler.join()
        if server.alive():
            server.stop(signal.SIGKILL)
    report.seconds = time.monotonic() - began
    judge(report, database, data_dir / "results", server, sampler)
    return report


def judge(report: Report, database: Path, results: Path, server: ServerProcess, sampler: Sampler) -> None:
    with sqlite3.connect(database) as db:
        rows = {row[0]: row[1:] for row in db.execute(
            "SELECT task_id, state, attempt, worker, error_code, error_message, outputs FROM tasks")}
    for task_id, (state, attempt, _worker, code, message, outputs) in rows.items():
        report.states[state] += 1
        report.attempts[attempt] += 1
        if state not in FINISHED:
            report.stuck.append(task_id)
        if state == "FAILED":
            report.failures[f"{code}: {message}"] += 1
        if state == "SUCCEEDED" and not all((results / name).is_file() for name in json.loads(outputs)):
            report.missing_results.append(task_id)
    for task_id in report.acknowledged:
        state, *_rest, code, message, _ = rows.get(task_id, (None, None, None, None, None, None))
        if state not in ("SUCCEEDED", "FAILED") or (state == "FAILED" and not (code and message)):
            report.lost.append(task_id)
    ended = {start.worker: start.ended for start in server.starts if start.worker}
    for task_id, owners in sampler.seen.items():
        if any(worker not in ended for _, worker, _ in owners):
            report.unknown_owners.append(task_id)
            continue
        for (_, previous, _), (_, worker, claimed_at) in itertools.pairwise(owners):
            if worker != previous:
                report.owner_changes += 1
                previous_end = ended[previous]
                if previous_end is None or previous_end > claimed_at:
                    report.double.append(task_id)


def print_report(report: Report) -> None:
    print("\n| | |\n|---|---|")
    running = sum(1 for cycle in report.cycles if cycle.running_at_kill)
    for label, value in (
            ("kill cycles", f"{len(report.cycles)} ({running} with a task RUNNING at the kill)"),
            ("tasks acknowledged", len(report.acknowledged)),
            ("tasks stored (incl. unanswered)", sum(report.states.values())),
            ("final states", dict(report.states)),
            ("final attempts -> tasks", dict(sorted(report.attempts.items()))),
            ("owner changes observed", report.owner_changes),
            ("lost / stuck / double", f"{len(report.lost)} / {len(report.stuck)} / {len(report.double)}"),
            ("unknown owners / missing results", f"{len(report.unknown_owners)} / {len(report.missing_results)}"),
            ("final drain", f"{report.drain_seconds:.1f} s"),
            ("total", f"{report.seconds:.0f} s")):
        print(f"| {label} | {value} |")
    for reason, count in report.failures.items():
        print(f"| FAILED x{count} | {reason} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-models", type=Path, default=DEFAULT_DEMO_MODELS)
    arguments = parser.parse_args()
    print("| cycle | killed after (s) | acknowledged | PENDING at kill | RUNNING at kill | missing after kill |")
    print("|---|---|---|---|---|---|")

    def row(index: int, cycle: Cycle) -> None:
        print(f"| {index + 1} | {cycle.seconds_to_kill:.2f} | {cycle.acknowledged} | {cycle.pending_at_kill} | "
              f"{cycle.running_at_kill} | {cycle.missing_after_kill} |", flush=True)

    with tempfile.TemporaryDirectory(prefix="crash-loop-") as scratch:
        report = crash_loop(Path(scratch), arguments.demo_models, arguments.cycles, arguments.seed, on_cycle=row)
    print_report(report)
    bad = report.lost or report.stuck or report.double or report.unknown_owners or report.missing_results
    return 1 if bad or any(cycle.missing_after_kill for cycle in report.cycles) else 0


if __name__ == "__main__":
    sys.exit(main())
