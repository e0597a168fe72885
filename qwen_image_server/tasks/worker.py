"""Engine workers: claim a batch of compatible tasks, run it on the engine, store the images, complete the tasks.

The engine's thread does GPU work only. Around it, on the event loop:

- the stored inputs are decoded in a thread and the tasks become engine jobs under the model's plan;
- progress arrives as events and is written best-effort, at most a few times a second, by a writer of its
  own: a slow or failing write can never fail a batch;
- watermarking, encoding and storing the images run as their own stage, so the worker claims the next batch
  as soon as the engine is done with this one (at most ``MAX_STORING`` batches wait to be stored);
- leases are renewed until a batch's results are stored; if the process dies, the leases lapse and the
  reaper hands the tasks to the next worker.

A worker talks to its engine only through ``BatchRunner``, so a remote engine (a Ray Serve replica) can stand
where the in-process ``EngineRunner`` stands.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from qwen_image_server.engine.contract import EngineBatch, EngineJob, Event, JobOutput, Plan, Progress
from qwen_image_server.errors import InvalidImage, ResultStorageFailed, ServiceError, TaskTimedOut
from qwen_image_server.media.images import ImageLimits, add_watermark, decode_image, encode_image
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.metrics import Metrics
from qwen_image_server.tasks.models import Job, TaskFailure, TaskRecord, TaskState
from qwen_image_server.tasks.queue import TaskQueue
from qwen_image_server.tasks.store import TaskStore

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.25
MAX_STORING = 2

PlanFor = Callable[[str, int], Plan]
"""The plan that runs a model name for a request with this many input images."""


class BatchRunner(Protocol):
    @property
    def ready(self) -> bool: ...

    def run(self, batch: EngineBatch, stop: threading.Event | None = None) -> AsyncIterator[Event]: ...


class ProgressWriter:
    """The latest progress of each running batch, written to the store at most every ``interval`` seconds.

    Best effort: a write that fails is logged and the next one tries again; nothing waits for a write."""

    def __init__(self, store: TaskStore, worker: str, interval: float = PROGRESS_INTERVAL_SECONDS) -> None:
        self.store = store
        self.worker = worker
        self.interval = interval
        self._latest: dict[tuple[str, ...], tuple[int, int]] = {}
        self._flushing: asyncio.Task[None] | None = None

    def note(self, task_ids: list[str], progress: Progress) -> None:
        self._latest[tuple(task_ids)] = (progress.step, progress.total)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self.interval)
        latest, self._latest = self._latest, {}
        for task_ids, (step, total) in latest.items():
            try:
                await asyncio.to_thread(self.store.progress, list(task_ids), self.worker, step, total)
            except Exception:
                log.exception("worker %s: writing progress failed; the batch goes on", self.worker)

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)


class Worker:
    def __init__(self, name: str, runner: BatchRunner, queue: TaskQueue, results: ResultStore,
                 limits: ImageLimits, metrics: Metrics, lease_seconds: float, max_batch: int, plan_for: PlanFor,
                 max_task_seconds: float = math.inf, collect_seconds: float = 0.0) -> None:
        self.name = name
        self.runner = runner
        self.queue = queue
        self.store: TaskStore = queue.store
        self.results = results
        self.limits = limits
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.max_batch = max_batch
        self.plan_for = plan_for
        self.max_task_seconds = max_task_seconds
        self.collect_seconds = collect_seconds
        self.progress = ProgressWriter(self.store, name)
        self._storing: set[asyncio.Task[None]] = set()

    async def run_forever(self) -> None:
        log.info("worker %s: started", self.name)
        try:
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
                elif await self.queue.wait_for_work() and self.collect_seconds:
                    await asyncio.sleep(self.collect_seconds)  # let a burst arrive, to claim it as one batch
        finally:
            for storing in list(self._storing):
                storing.cancel()
            await asyncio.gather(*self._storing, return_exceptions=True)
            await self.progress.close()

    async def process(self, batch: list[TaskRecord]) -> None:
        """Runs the batch on the engine; its results are stored by a stage of their own, which this awaits only
        when ``MAX_STORING`` batches are already waiting to be stored."""
        task_ids = [record.task_id for record in batch]
        for record in batch:  # a claimed record's started_at is its claim time
            if record.started_at is not None:
                self.metrics.queued_seconds.labels(record.model).observe(record.started_at - record.submitted_at)
        self.metrics.batch_size.observe(len(batch))
        renewing = asyncio.create_task(self._renew_leases(task_ids))
        stored = False
        try:
            outcome = await self._run(batch)
            if outcome is not None:
                storing = asyncio.create_task(self._store_all(*outcome, renewing))
                self._storing.add(storing)
                storing.add_done_callback(self._storing.discard)
                stored = True
                while len(self._storing) >= MAX_STORING:
                    await asyncio.wait(self._storing, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.store.release, task_ids, self.name))
            raise
        except Exception:
            log.exception("worker %s: batch %s failed unexpectedly", self.name, task_ids)
            for record in batch:
                await self._fail(record, ServiceError())
        finally:
            if not stored:
                renewing.cancel()

    async def _run(self, batch: list[TaskRecord]) -> tuple[list[TaskRecord], list[Job], list[JobOutput], float] | None:
        """The batch's outputs, or None once its tasks have failed (or were run again one by one)."""
        try:
            jobs, engine_batch = await asyncio.to_thread(self._engine_batch, batch)
        except ServiceError as error:
            for record in batch:
                await self._fail(record, error)
            return None
        started = time.perf_counter()
        try:
            outputs = await self._on_engine(batch, engine_batch)
        except TaskTimedOut as error:  # alone, each would only run out of time again
            for record in batch:
                await self._fail(record, error)
            return None
        except ServiceError as error:
            if len(batch) == 1:
                await self._fail(batch[0], error)
                return None
            log.warning("batch of %d failed (%s); running its tasks one by one", len(batch), error.message)
            for record in batch:
                await self.process([record])
            return None
        seconds = time.perf_counter() - started
        self.metrics.steps_per_second.labels(batch[0].model).set(engine_batch.plan.steps / seconds if seconds else 0)
        return batch, jobs, outputs, seconds

    async def _on_engine(self, batch: list[TaskRecord], engine_batch: EngineBatch) -> list[JobOutput]:
        task_ids = [record.task_id for record in batch]
        deadline = time.monotonic() + self.max_task_seconds
        stop = threading.Event()
        outputs: list[JobOutput] = []
        async for event in self.runner.run(engine_batch, stop):
            if isinstance(event, Progress):
                self.progress.note(task_ids, event)
                if time.monotonic() > deadline and event.step < event.total:
                    stop.set()
                    raise TaskTimedOut(f"The task ran longer than {self.max_task_seconds:g} s (the server's limit "
                                       f"per task) and was stopped after {event.step} of {event.total} steps.")
            else:
                outputs = event
        return outputs

    def _engine_batch(self, batch: list[TaskRecord]) -> tuple[list[Job], EngineBatch]:
        """The tasks as jobs with their stored inputs decoded, and as one engine batch under the model's plan."""
        jobs = []
        for record in batch:
            try:
                images = [decode_image(data, self.limits) for data in self.store.inputs(record.task_id)]
            except InvalidImage as error:
                raise InvalidImage(f"A stored input of task {record.task_id} no longer decodes: {error}") from error
            jobs.append(Job.from_parameters(record.parameters, images))
        first = jobs[0]
        plan = self.plan_for(first.model, len(first.images))
        engine_jobs = [EngineJob(prompt=job.prompt, seed=job.seed, n=job.n, negative_prompt=job.negative_prompt,
                                 images=job.images, mask=job.mask, prompt_extend=job.prompt_extend) for job in jobs]
        return jobs, EngineBatch(plan, first.width, first.height, engine_jobs)

    async def _store_all(self, batch: list[TaskRecord], jobs: list[Job], outputs: list[JobOutput], seconds: float,
                         renewing: asyncio.Task[None]) -> None:
        try:
            for record, job, output in zip(batch, jobs, outputs, strict=True):
                await self._succeed(record, job, output, seconds / len(batch))
        except asyncio.CancelledError:
            unfinished = [record.task_id for record in batch]
            await asyncio.shield(asyncio.to_thread(self.store.release, unfinished, self.name))
            raise
        finally:
            renewing.cancel()

    async def _succeed(self, record: TaskRecord, job: Job, output: JobOutput, engine_share: float) -> None:
        """``engine_share``: this task's part of its batch's engine time, which paces ``Retry-After``."""
        try:
            outputs, size = await asyncio.to_thread(self._store_images, record.task_id, output, job)
        except OSError as error:
            log.error("task %s: storing its result failed: %s", record.task_id, error)
            cause = error.strerror or type(error).__name__
            await self._fail(record, ResultStorageFailed(f"Failed to store the result image: {cause}."))
            return
        if await asyncio.to_thread(self.store.succeed, record.task_id, self.name, outputs, output.actual_prompt,
                                   size):
            self._finished(record, TaskState.SUCCEEDED, engine_share)
            self.metrics.images_generated.labels(record.model).inc(len(outputs))
        else:
            log.warning("task %s: lease lost before completion; its result is left to the new owner",
                        record.task_id)

    def _store_images(self, task_id: str, output: JobOutput, job: Job) -> tuple[list[str], int]:
        """The stored results' names and their bytes in all."""
        key = uuid.UUID(task_id).hex
        names, size = [], 0
        for index, image in enumerate(output.images):
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

