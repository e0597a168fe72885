"""The queue: admission into the durable store, and the in-process signals around it.

A task is written to the store before anything else knows of it, so an accepted task survives a crash.
Signals only shorten waits (a worker wakes on new work, a sync request wakes when its task ends); every
wait also re-reads the store on a timer, so tasks re-queued by the reaper or another process are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable

from qwen_image_server.errors import Throttling
from qwen_image_server.tasks.models import NewTask, TaskRecord
from qwen_image_server.tasks.store import TaskStore

_DISCONNECT_CHECK_SECONDS = 0.25
_AVERAGE_WEIGHT = 0.2


class TaskQueue:
    def __init__(self, store: TaskStore, max_pending: int, poll_seconds: float, workers: int = 1) -> None:
        self.store = store
        self.max_pending = max_pending
        self.poll_seconds = poll_seconds
        self.workers = workers
        self._work = asyncio.Event()
        self._finished: dict[str, asyncio.Event] = {}
        self._average_task_seconds = 1.0

    async def check_capacity(self) -> None:
        """A cheap early refusal, before inputs are downloaded; ``submit`` enforces the bound atomically."""
        if await asyncio.to_thread(self.store.count_pending) >= self.max_pending:
            raise self._full()

    async def submit(self, task: NewTask) -> None:
        if not await asyncio.to_thread(self.store.create, task, self.max_pending):
            raise self._full()
        self.wake_workers()

    def _full(self) -> Throttling:
        """Retry-After: about when the workers, at their recent pace, will have freed a place."""
        wait = self._average_task_seconds / max(1, self.workers)
        return Throttling(math.ceil(wait), f"Requests throttling triggered: {self.max_pending} tasks are already "
                                           "waiting. Retry after the time in the Retry-After header.")

    def wake_workers(self) -> None:
        self._work.set()

    async def wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), self.poll_seconds)

    def clear_work_signal(self) -> None:
        """Called before a claim, so work submitted during the claim wakes the next wait at once."""
        self._work.clear()

    def task_finished(self, task_id: str, engine_seconds: float | None = None) -> None:
        """Wakes the task's waiter; ``engine_seconds`` (its share of a batch) updates the pace behind Retry-After."""
        if engine_seconds is not None:
            self._average_task_seconds += _AVERAGE_WEIGHT * (engine_seconds - self._average_task_seconds)
        event = self._finished.get(task_id)
        if event is not None:
            event.set()

    async def wait(self, task_id: str, key_id: str, disconnected: Callable[[], Awaitable[bool]]) -> TaskRecord:
        """Waits for the task to end. If the client goes away first, a still-PENDING task is canceled and a
        RUNNING one keeps going (its result stays retrievable as a task); either way its record returns."""
        event = self._finished.setdefault(task_id, asyncio.Event())
        try:
            while True:
                record = await asyncio.to_thread(self.store.get, task_id)
                if record is None:
                    raise LookupError(f"task {task_id} vanished while awaited")
                if record.state.finished:
                    return record
                if await disconnected():
                    await asyncio.to_thread(self.store.cancel, task_id, key_id)
                    return await asyncio.to_thread(self.store.get, task_id) or record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), _DISCONNECT_CHECK_SECONDS)
        finally:
            self._finished.pop(task_id, None)
