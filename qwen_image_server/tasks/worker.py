"""Engine workers: claim a batch of compatible tasks, run it, store the images, complete the tasks.

A worker talks to its engine only through ``BatchRunner``, so a remote deployment (a Ray Serve replica per
GPU, say) can stand where the in-process ``EngineRunner`` stands. While a batch runs, the worker renews its
leases; if the process dies, the leases lapse and the reaper hands the tasks to the next worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Protocol

from qwen_image_server.errors import InvalidImage, ResultStorageFailed, ServiceError, TaskTimedOut
from qwen_image_server.media.images import ImageLimits, add_watermark, decode_image, encode_image
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.metrics import Metrics
from qwen_image_server.tasks.models import Job, JobResult, TaskFailure, TaskRecord, TaskState
from qwen_image_server.tasks.queue import TaskQueue
from qwen_image_server.tasks.store import TaskStore

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25


class BatchRunner(Protocol):
    @property
    def ready(self) -> bool: ...

    async def run_batch(self, jobs: list[Job], on_step: Callable[[int, int], None] | None = None
                        ) -> list[JobResult]: ...


class Worker:
    def __init__(self, name: str, runner: BatchRunner, queue: TaskQueue, results: ResultStore,
                 limits: ImageLimits, metrics: Metrics, lease_seconds: float, max_batch: int,
                 max_task_seconds: float = math.inf) -> None:
        self.name = name
        self.runner = runner
        self.queue = queue
        self.store: TaskStore = queue.store
        self.results = results
        self.limits = limits
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.max_batch = max_batch
        self.max_task_seconds = max_task_seconds

    async def run_forever(self) -> None:
        log.info("worker %s: started", self.name)
        while True:
            if not self.runner.ready:
                await self.queue.wait_for_work()
                continue
            self.queue.clear_work_signal()
            try:
                batch = await asyncio.to_thread(self.store.claim, self.name, self.lease_seconds, self.max_batch)
            except Exception:
                log.exception("worker %s: claiming failed; retrying", self.name)
                batch = []
            if batch:
                await self.process(batch)
            else:
                await self.queue.wait_for_work()

    async def process(self, batch: list[TaskRecord]) -> None:
        task_ids = [record.task_id for record in batch]
        for record in batch:  # a claimed record's started_at is its claim time
            if record.started_at is not None:
                self.metrics.queued_seconds.labels(record.model).observe(record.started_at - record.submitted_at)
        self.metrics.batch_size.observe(len(batch))
        renewing = asyncio.create_task(self._renew_leases(task_ids))
        try:
            await self._run(batch)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.store.release, task_ids, self.name))
            raise
        except Exception:
            log.exception("worker %s: batch %s failed unexpectedly", self.name, task_ids)
            for record in batch:
                await self._fail(record, ServiceError())
        finally:
            renewing.cancel()

    async def _run(self, batch: list[TaskRecord]) -> None:
        try:
            jobs = await asyncio.to_thread(self._jobs, batch)
        except ServiceError as error:
            for record in batch:
                await self._fail(record, error)
            return
        started = time.perf_counter()
        try:
            results = await self.runner.run_batch(jobs, self._progress_reporter(batch))
        except TaskTimedOut as error:  # alone, each would only run out of time again
            for record in batch:
                await self._fail(record, error)
            return
        except ServiceError as error:
            if len(batch) == 1:
                await self._fail(batch[0], error)
                return
            log.warning("batch of %d failed (%s); running its tasks one by one", len(batch), error.message)
            for record in batch:
                await self._run([record])
            return
        seconds = time.perf_counter() - started
        steps = max(1, batch[0].progress_total or 0)
        self.metrics.steps_per_second.labels(batch[0].model).set(steps / seconds if seconds else 0)
        for record, job, result in zip(batch, jobs, results, strict=True):
            await self._succeed(record, job, result, seconds / len(batch))

    def _jobs(self, batch: list[TaskRecord]) -> list[Job]:
        jobs = []
        for record in batch:
            try:
                images = [decode_image(data, self.limits) for data in self.store.inputs(record.task_id)]
            except InvalidImage as error:
                raise InvalidImage(f"A stored input of task {record.task_id} no longer decodes: {error}") from error
            jobs.append(Job.from_parameters(record.parameters, images))
        return jobs

    def _progress_reporter(self, batch: list[TaskRecord]) -> Callable[[int, int], None]:
        """Called on the engine's thread after every denoising step; writes at most a few times a second, and
        stops the batch (``TaskTimedOut``) once it has run for ``max_task_seconds``."""
        task_ids = [record.task_id for record in batch]
        last_write = 0.0
        deadline = time.monotonic() + self.max_task_seconds

        def report(step: int, total: int) -> None:
            nonlocal last_write
            for record in batch:
                record.progress_total = total
            now = time.monotonic()
            if now > deadline and step < total:
                raise TaskTimedOut(f"The task ran longer than {self.max_task_seconds:g} s (the server's limit "
                                   f"per task) and was stopped after {step} of {total} steps.")
            if step == total or now - last_write >= PROGRESS_INTERVAL_SECONDS:
                last_write = now
                self.store.progress(task_ids, self.name, step, total)

        return report

    async def _succeed(self, record: TaskRecord, job: Job, result: JobResult, engine_share: float) -> None:
        """``engine_share``: this task's part of its batch's pipeline time, which paces ``Retry-After``."""
        try:
            outputs, size = await asyncio.to_thread(self._store_images, record.task_id, result, job)
        except OSError as error:
            log.error("task %s: storing its result failed: %s", record.task_id, error)
            cause = error.strerror or type(error).__name__
            await self._fail(record, ResultStorageFailed(f"Failed to store the result image: {cause}."))
            return
        if await asyncio.to_thread(self.store.succeed, record.task_id, self.name, outputs, result.actual_prompt,
                                   size):
            self._finished(record, TaskState.SUCCEEDED, engine_share)
            self.metrics.images_generated.labels(record.model).inc(len(outputs))
        else:
            log.warning("task %s: lease lost before completion; its result is left to the new owner",
                        record.task_id)

    def _store_images(self, task_id: str, result: JobResult, job: Job) -> tuple[list[str], int]:
        """The stored results' names and their bytes in all."""
        key = uuid.UUID(task_id).hex
        names, size = [], 0
        for index, image in enumerate(result.images):
            data = encode_image(add_watermark(image) if job.watermark else image, job.output_format,
                                job.output_quality)
            names.append(self.results.save(key, index, data, job.output_format))
            size += len(data)
        return names, size

    async def _fail(self, record: TaskRecord, error: ServiceError) -> None:
        failure = TaskFailure(error.code, error.status, error.message)
        if await asyncio.to_thread(self.store.fail, record.task_id, self.name, failure):
            log.info("task %s failed: %s %s", record.task_id, error.code, error.message)
            self._finished(record, TaskState.FAILED, None)

    def _finished(self, record: TaskRecord, state: TaskState, engine_share: float | None) -> None:
        self.metrics.tasks_finished.labels(record.model, state).inc()
        if record.started_at is not None:
            self.metrics.running_seconds.labels(record.model).observe(time.time() - record.started_at)
        self.queue.task_finished(record.task_id, engine_share)

    async def _renew_leases(self, task_ids: list[str]) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await asyncio.to_thread(self.store.heartbeat, task_ids, self.name, self.lease_seconds)
            except Exception:
                log.exception("worker %s: renewing leases failed; retrying", self.name)


async def maintain_periodically(queue: TaskQueue, max_attempts: int, retention_seconds: float,
                                interval_seconds: float) -> None:
    """Re-queues tasks whose worker vanished (lease expired), fails those out of attempts, and deletes tasks
    past their retention. Runs until cancelled."""
    while True:
        try:
            requeued, failed = await asyncio.to_thread(queue.store.reap, max_attempts)
            purged = await asyncio.to_thread(queue.store.purge, time.time() - retention_seconds)
        except Exception:
            log.exception("task store maintenance failed; retrying")
        else:
            if requeued or failed:
                log.warning("reaper: %d task(s) re-queued, %d failed after %d attempts", requeued, failed,
                            max_attempts)
                queue.wake_workers()
            if purged:
                log.info("removed %d task(s) past their retention", purged)
        await asyncio.sleep(interval_seconds)
