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

from qwen_image_server.errors import RateQuotaExceeded, ServiceError, Throttling
from qwen_image_server.tasks.models import NewTask, Quota, Refusal, TaskRecord
from qwen_image_server.tasks.store import TaskStore

_DISCONNECT_CHECK_SECONDS = 0.25
_AVERAGE_WEIGHT = 0.2


class ResultQuotaExceeded(Throttling):
    """The key's stored results reached its quota; room frees as they expire."""

    code = "Throttling.AllocationQuota"


class TaskQueue:
    def __init__(self, store: TaskStore, quota: Quota, poll_seconds: float, workers: int = 1) -> None:
        self.store = store
        self.quota = quota
        self.poll_seconds = poll_seconds
        self.workers = workers
        self._work = asyncio.Event()
        self._finished: dict[str, asyncio.Event] = {}
        self._average_task_seconds = 1.0

    async def check_capacity(self, key_id: str, cost: float) -> None:
        """A cheap early refusal, before inputs are downloaded; ``submit`` enforces the bounds atomically."""
        refusal = await asyncio.to_thread(self.store.refusal, key_id, cost, self.quota)
        if refusal is not None:
            raise self._refused(refusal)

    async def submit(self, task: NewTask) -> None:
        refusal = await asyncio.to_thread(self.store.create, task, self.quota)
        if refusal is not None:
            raise self._refused(refusal)
        self.wake_workers()

    def _refused(self, refusal: Refusal) -> ServiceError:
        """Retry-After: about when the workers, at their recent pace, will have freed a place."""
        wait = math.ceil(self._average_task_seconds / max(1, self.workers))
        quota = self.quota
        if refusal is Refusal.QUEUE_FULL:
            return Throttling(wait, f"Requests throttling triggered: {quota.max_pending} tasks are already "
                                    "waiting. Retry after the time in the Retry-After header.")
        if refusal is Refusal.KEY_SHARE:
            return RateQuotaExceeded(wait, f"This API key already has {quota.max_pending_per_key} tasks "
                                           "waiting, its share of the queue; retry once some have started.")
        if refusal is Refusal.KEY_COST:
            return RateQuotaExceeded(wait, f"This API key's tasks in flight already hold {quota.max_cost_per_key:g} "
                                           "megapixel-steps of work, its budget; retry once some have finished.")
        return ResultQuotaExceeded(3600, f"This API key's stored results reached {quota.max_result_bytes_per_key} "
                                         "bytes, its quota; room frees as results expire (24 h).")

    def wake_workers(self) -> None:
        self._work.set()

    async def wait_for_work(self) -> bool:
        """Waits for new work, or ``poll_seconds`` at most; True when woken by a submission."""
        try:
            await asyncio.wait_for(self._work.wait(), self.poll_seconds)
        except TimeoutError:
            return False
        return True

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
