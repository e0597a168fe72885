"""The worker around its engine, with a real SQLite store and result store and an engine of the test's own that
draws flat images, fails any batch holding a poisoned prompt, and steps only when the test lets it (a gate), so
nothing here depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
import uuid

import pytest
from PIL import Image

from qwen_image_server.engine.contract import JobOutput, Plan, Progress
from qwen_image_server.errors import InferenceFailed
from qwen_image_server.media.images import ImageLimits
from qwen_image_server.media.storage import ResultStore, UrlSigner
from qwen_image_server.metrics import Metrics
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.models import Job, NewTask, Quota, TaskMode, TaskState
from qwen_image_server.tasks.queue import TaskQueue
from qwen_image_server.tasks.sqlite import SqliteTaskStore
from qwen_image_server.tasks.worker import Worker

POISON = "explode"
PLAN = Plan("weights", "qwen-image", steps=2, guidance=4.0, prompt_token_limit=800)


class GatedEngine:
    """Two steps per batch, each taken only when the test allows one (``hold``, ``allow``); records each batch's
    prompts and how many steps it took."""

    ready = True

    def __init__(self) -> None:
        self.allowed = math.inf
        self.changed = asyncio.Event()
        self.calls: list[list[str]] = []
        self.steps_taken = 0

    def hold(self) -> None:
        self.allowed = 0

    def allow(self, steps: float = math.inf) -> None:
        self.allowed = steps if steps == math.inf else self.allowed + steps
        self.changed.set()

    async def step(self) -> None:
        while self.allowed <= 0:
            self.changed.clear()
            await self.changed.wait()
        self.allowed -= 1
        self.steps_taken += 1

    async def run(self, batch, stop=None):
        self.calls.append([job.prompt for job in batch.jobs])
        for step in (1, 2):
            await self.step()
            yield Progress(step, 2)
            if stop is not None and stop.is_set():
                return
        if any(POISON in job.prompt for job in batch.jobs):
            raise InferenceFailed("Inference ran out of device memory; try a smaller size or n.")
        yield [JobOutput([Image.new("RGB", (batch.width, batch.height))] * job.n, None) for job in batch.jobs]


class SlowResults(ResultStore):
    """Results whose saving waits for ``released``: the store stage of a batch can be kept busy."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.released = threading.Event()
        self.released.set()

    def save(self, *args, **kwargs):
        self.released.wait()
        return super().save(*args, **kwargs)


class FailingProgress(SqliteTaskStore):
    """A store whose progress writes always fail, as a locked or failing database would."""

    def progress(self, *args, **kwargs):
        raise sqlite3.OperationalError("database is locked")


@pytest.fixture
def parts(tmp_path):
    store = SqliteTaskStore(tmp_path / "tasks.db")
    results = SlowResults(tmp_path / "results", UrlSigner(b"k"), "http://test", 3600)
    return store, results


def make_worker(parts, engine, lease_seconds=30.0, max_batch=4, max_task_seconds=float("inf")):
    store, results = parts
    queue = TaskQueue(store, Quota(100), poll_seconds=0.05)
    return Worker("w", engine, queue, results, ImageLimits.from_settings(Settings()), Metrics(), lease_seconds,
                  max_batch, lambda model, images: PLAN, max_task_seconds)


def add(store, prompt, batch_key="k"):
    task_id = str(uuid.uuid4())
    job = Job(model="qwen-image", prompt=prompt, width=64, height=32, seed=1)
    assert store.create(NewTask(task_id, "key", task_id, TaskMode.ASYNC, job, [], batch_key), Quota(100)) is None
    return task_id


async def until(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the worker did not get there"
        await asyncio.sleep(0.02)


async def drain(worker, condition):
    running = asyncio.create_task(worker.run_forever())
    try:
        await until(condition)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def states(store, task_ids):
    return [store.get(task_id).state for task_id in task_ids]


def test_a_failing_batch_is_rerun_one_by_one_so_only_the_poisoned_task_fails(parts):
    store, results = parts
    engine = GatedEngine()
    ids = [add(store, "a cat"), add(store, f"{POISON} please"), add(store, "a dog")]
    asyncio.run(drain(make_worker(parts, engine), lambda: all(state.finished for state in states(store, ids))))
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
    asyncio.run(drain(make_worker(parts, GatedEngine()), lambda: store.get(ids[1]).state.finished))
    assert states(store, ids) == [TaskState.FAILED, TaskState.SUCCEEDED]


def test_leases_are_renewed_while_a_batch_is_held(parts):
    store, _ = parts
    task_id = add(store, "held")
    engine = GatedEngine()
    worker = make_worker(parts, engine, lease_seconds=0.3)
    reaped = []

    async def scenario():
        engine.hold()
        running = asyncio.create_task(worker.run_forever())
        await until(lambda: store.get(task_id).state is TaskState.RUNNING)
        for _ in range(8):  # well past two leases
            reaped.append(await asyncio.to_thread(store.reap, 3))
            await asyncio.sleep(0.1)
        engine.allow()
        await until(lambda: store.get(task_id).state.finished)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    asyncio.run(scenario())
    record = store.get(task_id)
    assert (record.state, record.attempt) == (TaskState.SUCCEEDED, 1)
    assert all(counts == (0, 0) for counts in reaped)


def test_progress_is_written_to_the_task_while_it_runs(parts):
    store, _ = parts
    task_id = add(store, "steps")
    engine = GatedEngine()

    async def scenario():
        engine.hold()
        running = asyncio.create_task(make_worker(parts, engine).run_forever())
        await until(lambda: engine.calls)
        engine.allow(1)  # one step, then held before the second
        await until(lambda: store.get(task_id).progress_step is not None)
        record = store.get(task_id)
        engine.allow()
        await until(lambda: store.get(task_id).state.finished)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return record

    record = asyncio.run(scenario())
    assert (record.state, record.progress_step, record.progress_total) == (TaskState.RUNNING, 1, 2)


def test_a_progress_write_that_fails_never_fails_the_batch(tmp_path, parts):
    failing = FailingProgress(tmp_path / "failing.db")
    _, results = parts
    ids = [add(failing, "a"), add(failing, "b")]
    asyncio.run(drain(make_worker((failing, results), GatedEngine()),
                      lambda: all(state.finished for state in states(failing, ids))))
    assert states(failing, ids) == [TaskState.SUCCEEDED] * 2


def test_the_next_batch_runs_while_the_previous_one_is_being_stored(parts):
    store, results = parts
    first, second = add(store, "first", batch_key=None), add(store, "second", batch_key=None)
    engine = GatedEngine()

    async def scenario():
        results.released.clear()
        running = asyncio.create_task(make_worker(parts, engine).run_forever())
        await until(lambda: len(engine.calls) == 2)  # the engine has the second batch...
        assert states(store, [first, second]) == [TaskState.RUNNING] * 2  # ...while the first is still stored
        results.released.set()
        await until(lambda: all(state.finished for state in states(store, [first, second])))
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    asyncio.run(scenario())
    assert states(store, [first, second]) == [TaskState.SUCCEEDED] * 2


def test_a_task_past_its_runtime_cap_is_stopped_and_fails_with_the_reason(parts):
    store, _ = parts
    task_id = add(store, "forever")
    engine = GatedEngine()
    asyncio.run(drain(make_worker(parts, engine, max_task_seconds=0.0), lambda: store.get(task_id).state.finished))
    record = store.get(task_id)
    assert (record.state, record.error_code) == (TaskState.FAILED, "RequestTimeOut")
    assert "stopped after 1 of 2 steps" in record.error_message
    assert engine.steps_taken == 1, "stopped after its first step"


def test_shutdown_mid_batch_hands_the_tasks_back_without_spending_an_attempt(parts):
    store, _ = parts
    ids = [add(store, "first"), add(store, "second")]
    engine = GatedEngine()
    engine.hold()
    asyncio.run(drain(make_worker(parts, engine), lambda: states(store, ids) == [TaskState.RUNNING] * 2))
    assert [(record.state, record.attempt) for record in map(store.get, ids)] == [(TaskState.PENDING, 0)] * 2
