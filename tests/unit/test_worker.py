"""The worker's fault handling, with a real SQLite store and result store and an injected faulty engine."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from PIL import Image

from qwen_image_server.errors import InferenceFailed
from qwen_image_server.media.images import ImageLimits
from qwen_image_server.media.storage import ResultStore, UrlSigner
from qwen_image_server.metrics import Metrics
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.models import Job, JobResult, NewTask, Quota, TaskMode, TaskState
from qwen_image_server.tasks.queue import TaskQueue
from qwen_image_server.tasks.sqlite import SqliteTaskStore
from qwen_image_server.tasks.worker import Worker

POISON = "explode"


class FaultyEngine:
    """Draws flat images, reports two steps, fails any batch holding a poisoned prompt; records its calls."""

    ready = True

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[list[str]] = []

    async def run_batch(self, jobs, on_step=None):
        self.calls.append([job.prompt for job in jobs])
        await asyncio.to_thread(self._run, jobs, on_step)
        if any(POISON in job.prompt for job in jobs):
            raise InferenceFailed("Inference ran out of device memory; try a smaller size or n.")
        return [JobResult([Image.new("RGB", (job.width, job.height))] * job.n, None, self.seconds) for job in jobs]

    def _run(self, jobs, on_step):
        for step in (1, 2):
            time.sleep(self.seconds / 2)
            if on_step is not None:
                on_step(step, 2)


@pytest.fixture
def parts(tmp_path):
    store = SqliteTaskStore(tmp_path / "tasks.db")
    results = ResultStore(tmp_path / "results", UrlSigner(b"k"), "http://test", 3600)
    return store, results


def make_worker(parts, engine, lease_seconds=30.0, max_batch=4):
    store, results = parts
    queue = TaskQueue(store, Quota(100), poll_seconds=0.05)
    return Worker("w", engine, queue, results, ImageLimits.from_settings(Settings()), Metrics(), lease_seconds,
                  max_batch)


def add(store, prompt, batch_key="k"):
    task_id = str(uuid.uuid4())
    job = Job(model="qwen-image", prompt=prompt, width=64, height=32, seed=1)
    assert store.create(NewTask(task_id, "key", task_id, TaskMode.ASYNC, job, [], batch_key), Quota(100)) is None
    return task_id


async def drain(worker, until):
    runner = asyncio.create_task(worker.run_forever())
    try:
        deadline = time.monotonic() + 20
        while not until():
            assert time.monotonic() < deadline, "the worker did not get there"
            await asyncio.sleep(0.02)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def states(store, task_ids):
    return [store.get(task_id).state for task_id in task_ids]


def test_a_failing_batch_is_rerun_one_by_one_so_only_the_poisoned_task_fails(parts):
    store, results = parts
    engine = FaultyEngine()
    ids = [add(store, "a cat"), add(store, f"{POISON} please"), add(store, "a dog")]
    worker = make_worker(parts, engine)
    asyncio.run(drain(worker, lambda: all(state.finished for state in states(store, ids))))
    assert engine.calls == [["a cat", f"{POISON} please", "a dog"], ["a cat"], [f"{POISON} please"], ["a dog"]]
    assert states(store, ids) == [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.SUCCEEDED]
    failed = store.get(ids[1])
    assert (failed.error_code, failed.error_status) == ("InternalError.Algo", 500)
    assert "memory" in failed.error_message
    assert sorted(path.name for path in results.directory.iterdir()) == sorted(
        f"{uuid.UUID(task_id).hex}-0.png" for task_id in (ids[0], ids[2]))


def test_the_task_after_a_failure_runs(parts):
    store, _ = parts
    ids = [add(store, POISON, batch_key=None), add(store, "fine", batch_key=None)]
    asyncio.run(drain(make_worker(parts, FaultyEngine()), lambda: store.get(ids[1]).state.finished))
    assert states(store, ids) == [TaskState.FAILED, TaskState.SUCCEEDED]


def test_leases_are_renewed_while_a_long_batch_runs(parts):
    store, _ = parts
    task_id = add(store, "slow")
    worker = make_worker(parts, FaultyEngine(seconds=1.5), lease_seconds=0.3)
    reaped = []

    async def scenario():
        async def reap_meanwhile():
            while True:
                reaped.append(await asyncio.to_thread(store.reap, 3))
                await asyncio.sleep(0.1)

        reaper = asyncio.create_task(reap_meanwhile())
        await drain(worker, lambda: store.get(task_id).state.finished)
        reaper.cancel()

    asyncio.run(scenario())
    record = store.get(task_id)
    assert (record.state, record.attempt) == (TaskState.SUCCEEDED, 1)
    assert all(counts == (0, 0) for counts in reaped) and len(reaped) >= 5


def test_progress_is_written_to_the_task_while_it_runs(parts):
    store, _ = parts
    task_id = add(store, "steps")
    seen = []

    def progress_recorded():
        record = store.get(task_id)
        if record.progress_step is not None:
            seen.append((record.state, record.progress_step, record.progress_total))
        return record.state.finished

    asyncio.run(drain(make_worker(parts, FaultyEngine(seconds=1.0)), progress_recorded))
    assert (TaskState.RUNNING, 1, 2) in seen


def test_shutdown_mid_batch_hands_the_tasks_back_without_spending_an_attempt(parts):
    store, _ = parts
    ids = [add(store, "first"), add(store, "second")]
    worker = make_worker(parts, FaultyEngine(seconds=2))
    asyncio.run(drain(worker, lambda: states(store, ids) == [TaskState.RUNNING] * 2))
    assert [(record.state, record.attempt) for record in map(store.get, ids)] == [(TaskState.PENDING, 0)] * 2
