"""The in-process engine: loads diffusers pipelines and runs batches through our own numbered steps.

It implements ``contract.GenerationEngine`` over plain data: plans in, progress events and images out. One
pipeline is loaded per distinct (weights, family, options), so every API name on the same weights shares
it. ``EngineRunner`` drives it from the event loop on one thread per device, so inference never blocks the
loop and batches never compete for a device; the thread does GPU work only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import diffusers
import torch

from qwen_image_server.engine.batching import batch_key
from qwen_image_server.engine.contract import EngineBatch, EngineJob, Event, JobOutput, Plan, Progress
from qwen_image_server.engine.families import FAMILIES
from qwen_image_server.engine.prompt_extend import extend_prompts
from qwen_image_server.engine.steps.base import BLANK_NEGATIVE_PROMPT, FamilySteps
from qwen_image_server.engine.steps.edit import EditPlusSteps, EditSteps
from qwen_image_server.engine.steps.qwen_image import QwenImageSteps
from qwen_image_server.engine.steps.qwen_image_21 import QwenImage21Steps
from qwen_image_server.errors import InferenceFailed, ModelUnavailable, ServiceError

log = logging.getLogger(__name__)

# Inpainting regenerates the masked area from pure noise, as OpenAI's masked edits replace it; diffusers
# blends the unmasked area back in at every step.
INPAINT_STRENGTH = 1.0

STEPS: dict[str, type[FamilySteps]] = {
    "qwen-image": QwenImageSteps,
    "qwen-image-edit": EditSteps,
    "qwen-image-edit-plus": EditPlusSteps,
    "qwen-image-2.1": QwenImage21Steps,
}


@dataclass(frozen=True)
class Device:
    name: str
    dtype: torch.dtype

    @classmethod
    def choose_all(cls, preference: str, cuda_indices: list[int] | None = None) -> list[Device]:
        """One device per engine worker: every chosen GPU in bf16, else the CPU in float32."""
        use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
        if not use_cuda:
            return [cls("cpu", torch.float32)]
        indices = cuda_indices if cuda_indices is not None else range(max(1, torch.cuda.device_count()))
        return [cls(f"cuda:{index}", torch.bfloat16) for index in indices]


def load_pipeline(plan: Plan, device: Device) -> Any:
    """``from_pretrained`` on a local directory or an HF repo id (HF cache), as the real weights load."""
    pipeline_class = getattr(diffusers, FAMILIES[plan.family].pipeline_class)
    pipeline = pipeline_class.from_pretrained(plan.weights, dtype=device.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device.name)


class Engine:
    """Serves ``plans`` on one device (``contract.GenerationEngine``)."""

    def __init__(self, plans: list[Plan], device: Device, prompt_extend_max_new_tokens: int) -> None:
        self.plans = list(dict.fromkeys(plans))
        self.device = device
        self.prompt_extend_max_new_tokens = prompt_extend_max_new_tokens
        self._pipelines: dict[tuple[str, str, Any], Any] = {}
        self._steps: dict[tuple[str, str, Any], FamilySteps] = {}
        self._inpainters: dict[tuple[str, str, Any], Any] = {}

    def load(self) -> None:
        for plan in self.plans:
            if plan.load_key not in self._pipelines:
                started = time.perf_counter()
                pipeline = load_pipeline(plan, self.device)
                self._pipelines[plan.load_key] = pipeline
                self._steps[plan.load_key] = STEPS[plan.family](pipeline, plan.options.cfg_batch)
                log.info("loaded %s from %s in %.1f s", FAMILIES[plan.family].pipeline_class, plan.weights,
                         time.perf_counter() - started)

    def ready(self) -> bool:
        return all(plan.load_key in self._pipelines for plan in self.plans)

    def batch_key(self, plan: Plan, job: EngineJob, width: int, height: int) -> str | None:
        return batch_key(plan, job.n, width, height, [image.size for image in job.images], job.mask is not None)

    def pipeline(self, plan: Plan) -> Any:
        pipeline = self._pipelines.get(plan.load_key)
        if pipeline is None:
            raise ModelUnavailable(f"The weights at {plan.weights!r} are not loaded (still loading, or they failed).")
        return pipeline

    def run(self, batch: EngineBatch) -> Generator[Event, None, None]:
        """Progress after each step, then the jobs' outputs. Any failure surfaces as ``InferenceFailed``; after
        an out-of-memory error the allocator's cache is emptied so the next batch starts clean."""
        try:
            yield from self._run(batch)
        except torch.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise InferenceFailed("Inference ran out of device memory; try a smaller size or n.") from error
        except (ServiceError, GeneratorExit):
            raise
        except Exception as error:
            log.exception("running a batch of %s failed", batch.plan.family)
            raise InferenceFailed() from error

    def _run(self, batch: EngineBatch) -> Generator[Event, None, None]:
        pipeline = self.pipeline(batch.plan)
        with torch.inference_mode():
            prompts = [self._truncated(pipeline, job.prompt, batch.plan.prompt_token_limit) for job in batch.jobs]
            extended = self._extended(pipeline, batch.jobs, prompts)
            used = [rewrite or prompt for rewrite, prompt in zip(extended, prompts, strict=True)]
            if any(job.mask is not None for job in batch.jobs):
                images = yield from self._inpaint(batch, used)
            else:
                images = []
                for event in self._steps[batch.plan.load_key].run(batch, used):
                    if isinstance(event, Progress):
                        yield event
                    else:
                        images = event
        yield [JobOutput(job_images, rewrite) for job_images, rewrite in zip(images, extended, strict=True)]

    def _extended(self, pipeline: Any, jobs: list[EngineJob], prompts: list[str]) -> list[str | None]:
        """The rewrites of the jobs that asked for one, in one generate call; None for the others."""
        asked = [index for index, job in enumerate(jobs) if job.prompt_extend]
        rewrites: list[str | None] = [None] * len(jobs)
        if asked:
            produced = extend_prompts(pipeline, [prompts[index] for index in asked],
                                      [jobs[index].images for index in asked], self.prompt_extend_max_new_tokens)
            for index, rewrite in zip(asked, produced, strict=True):
                log.info("prompt_extend rewrote %r as %r", prompts[index], rewrite)
                rewrites[index] = rewrite
        return rewrites

    @staticmethod
    def _truncated(pipeline: Any, prompt: str, limit: int) -> str:
        """The hosted API silently truncates prompts beyond the model's token limit; so do we."""
        tokenizer = getattr(pipeline, "tokenizer", None) or pipeline.processor.tokenizer
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return prompt if len(ids) <= limit else tokenizer.decode(ids[:limit])

    def _inpaint(self, batch: EngineBatch, prompts: list[str]) -> Generator[Event, None, list[list[Any]]]:
        """Masked edits run on the family's diffusers inpainting pipeline, built over the loaded components
        (no second copy of the weights), one job at a time; its steps are reported once the call returns."""
        inpainter = self._inpainters.get(batch.plan.load_key)
        if inpainter is None:
            inpaint_class = FAMILIES[batch.plan.family].inpaint_pipeline_class
            if inpaint_class is None:
                raise InferenceFailed(f"The {batch.plan.family} family cannot inpaint with a mask.")
            inpainter = getattr(diffusers, inpaint_class).from_pipe(self.pipeline(batch.plan))
            inpainter.set_progress_bar_config(disable=True)
            self._inpainters[batch.plan.load_key] = inpainter
        results = []
        for job, prompt in zip(batch.jobs, prompts, strict=True):
            arguments: dict[str, Any] = {
                "prompt": prompt, "image": job.images[0], "mask_image": job.mask, "strength": INPAINT_STRENGTH,
                "width": batch.width, "height": batch.height, "num_inference_steps": batch.plan.steps,
                "true_cfg_scale": batch.plan.guidance, "num_images_per_prompt": job.n,
                "generator": [torch.Generator(self.device.name).manual_seed(job.seed + i) for i in range(job.n)],
            }
            if batch.plan.guidance > 1:
                arguments["negative_prompt"] = job.negative_prompt or BLANK_NEGATIVE_PROMPT
            results.append(list(inpainter(**arguments).images))
        for step in range(batch.plan.steps):
            yield Progress(step + 1, batch.plan.steps)
        return results

    def close(self) -> None:
        self._pipelines.clear()
        self._steps.clear()
        self._inpainters.clear()


_DONE = object()


class EngineRunner:
    """Async front of an engine: one thread per device, pinned to it, so the event loop stays free.

    ``run`` hands the engine's events to the loop as they come (``call_soon_threadsafe``); ``stop`` makes a
    running batch end after its current step. ``holding()`` pauses the runner: a batch that comes while it is
    held waits on the engine thread until the block ends (to drain a device, or for a test to keep tasks
    queued without depending on inference speed).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine",
                                            initializer=_pin_device, initargs=(engine.device.name,))
        self._open = threading.Event()
        self._open.set()

    @property
    def ready(self) -> bool:
        return self.engine.ready()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    async def load(self) -> None:
        """Loads every plan on the engine's thread, the thread that will run them."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.load)

    async def run(self, batch: EngineBatch, stop: threading.Event | None = None) -> AsyncIterator[Event]:
        """The batch's events as they happen; the engine's exception, if it fails, after the events before it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        stop = stop or threading.Event()

        def drive() -> None:
            self._open.wait()
            running = self.engine.run(batch)
            try:
                for event in running:
                    loop.call_soon_threadsafe(events.put_nowait, event)
                    if stop.is_set():
                        return
            except BaseException as error:  # handed to the loop, which raises it there
                loop.call_soon_threadsafe(events.put_nowait, error)
            finally:
                running.close()
                loop.call_soon_threadsafe(events.put_nowait, _DONE)

        driving = loop.run_in_executor(self._executor, drive)
        try:
            while (event := await events.get()) is not _DONE:
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            stop.set()  # a consumer that leaves early ends the batch after its current step
            await asyncio.shield(driving)

    def close(self) -> None:
        self._open.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.engine.close()


def _pin_device(device: str) -> None:
    """Each engine thread works on its own device: CUDA calls without a device go there."""
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
