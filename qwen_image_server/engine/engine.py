"""The engine: loads diffusers pipelines and runs jobs on them. The only module that imports torch.

One pipeline is loaded per distinct weights source, so every API name that maps to the same weights
shares it. ``Engine.run_batch`` blocks; ``EngineRunner`` runs it on a single thread per device, so inference
never blocks the event loop and batches never compete for one device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import diffusers
import torch

from qwen_image_server.engine.prompt_extend import extend_prompt
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec
from qwen_image_server.errors import InferenceFailed, ModelUnavailable, ServiceError
from qwen_image_server.tasks.models import Job, JobResult

StepCallback = Callable[[int, int], None]

log = logging.getLogger(__name__)

BLANK_NEGATIVE_PROMPT = " "  # what the Qwen-Image model cards pass when there is no negative prompt
# Inpainting regenerates the masked area from pure noise, as OpenAI's masked edits replace it; diffusers
# blends the unmasked area back in at every step.
INPAINT_STRENGTH = 1.0


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


def load_pipeline(spec: ModelSpec, device: Device) -> Any:
    """``from_pretrained`` on a local directory or an HF repo id (HF cache), as the real weights load."""
    pipeline_class = getattr(diffusers, spec.family.pipeline_class)
    pipeline = pipeline_class.from_pretrained(spec.source, dtype=device.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device.name)


class Engine:
    def __init__(self, registry: ModelRegistry, device: Device, prompt_extend_max_new_tokens: int) -> None:
        self.registry = registry
        self.device = device
        self.prompt_extend_max_new_tokens = prompt_extend_max_new_tokens
        self._pipelines: dict[str, Any] = {}
        self._inpainters: dict[str, Any] = {}

    def served(self) -> list[ModelSpec]:
        """Every spec a request can run on: each name's, and its text-to-image variant where it has one."""
        return [variant for spec in self.registry.specs() for variant in spec.variants()]

    @property
    def loaded(self) -> bool:
        return all(spec.source in self._pipelines for spec in self.served())

    def load(self) -> None:
        for spec in self.served():
            if spec.source not in self._pipelines:
                started = time.perf_counter()
                self._pipelines[spec.source] = load_pipeline(spec, self.device)
                log.info("loaded %s (%s) from %s in %.1f s", spec.family.pipeline_class, spec.name,
                         spec.source, time.perf_counter() - started)

    def pipeline(self, spec: ModelSpec) -> Any:
        pipeline = self._pipelines.get(spec.source)
        if pipeline is None:
            raise ModelUnavailable(f"Model {spec.name!r} is not loaded (still loading, or it failed to load).")
        return pipeline

    def inpainter(self, spec: ModelSpec) -> Any:
        """The family's inpainting pipeline over the loaded pipeline's components: no second copy of weights."""
        inpainter = self._inpainters.get(spec.source)
        if inpainter is None:
            if spec.family.inpaint_pipeline_class is None:
                raise InferenceFailed(f"Model {spec.name} cannot inpaint with a mask.")
            inpainter = getattr(diffusers, spec.family.inpaint_pipeline_class).from_pipe(self.pipeline(spec))
            inpainter.set_progress_bar_config(disable=True)
            self._inpainters[spec.source] = inpainter
        return inpainter

    def run_batch(self, jobs: list[Job], on_step: StepCallback | None = None) -> list[JobResult]:
        """Runs jobs of one model and size in a single pipeline call; the caller checks they are compatible.

        Any failure of the pipeline surfaces as ``InferenceFailed``; after an out-of-memory error the
        allocator's cache is emptied so the next batch starts clean.
        """
        started = time.perf_counter()
        spec = self.registry.get(jobs[0].model).serving(len(jobs[0].images))
        pipeline = self.pipeline(spec)
        prompts, actual_prompts = [], []
        for job in jobs:
            prompt = truncate_tokens(pipeline, job.prompt, spec.rules.prompt_token_limit)
            actual_prompt = None
            if job.prompt_extend and spec.rules.prompt_extend:
                actual_prompt = extend_prompt(pipeline, prompt, job.images, self.prompt_extend_max_new_tokens)
                log.info("prompt_extend rewrote %r as %r", prompt, actual_prompt)
            prompts.append(actual_prompt or prompt)
            actual_prompts.append(actual_prompt)
        arguments = self.pipeline_arguments(spec, jobs, prompts)
        if on_step is not None:
            arguments["callback_on_step_end"] = _step_reporter(on_step, spec.steps)
        try:
            if jobs[0].mask is not None:
                pipeline = self.inpainter(spec)
            with torch.inference_mode():
                images = list(pipeline(**arguments).images)
        except torch.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise InferenceFailed("Inference ran out of device memory; try a smaller size or n.") from error
        except ServiceError:
            raise
        except Exception as error:
            log.exception("pipeline %s failed", spec.family.pipeline_class)
            raise InferenceFailed() from error
        seconds = time.perf_counter() - started
        n = jobs[0].n
        return [JobResult(images=images[i * n:(i + 1) * n], actual_prompt=actual_prompts[i], seconds=seconds)
                for i in range(len(jobs))]

    def pipeline_arguments(self, spec: ModelSpec, jobs: list[Job], prompts: list[str]) -> dict[str, Any]:
        """One call for every job and all their ``n`` images; job image ``i`` is seeded with ``seed + i``.

        diffusers orders a batch prompt by prompt, each prompt's images together, so the generators follow
        that order and a job's images do not depend on what it was batched with.
        """
        first = jobs[0]
        single = len(jobs) == 1
        arguments: dict[str, Any] = {
            "prompt": prompts[0] if single else prompts,
            "width": first.width,
            "height": first.height,
            "num_inference_steps": spec.steps,
            "true_cfg_scale": spec.true_cfg_scale,
            "num_images_per_prompt": first.n,
            "generator": [torch.Generator(self.device.name).manual_seed(job.seed + i)
                          for job in jobs for i in range(job.n)],
        }
        if spec.true_cfg_scale > 1:
            negatives = [job.negative_prompt or BLANK_NEGATIVE_PROMPT for job in jobs]
            arguments["negative_prompt"] = negatives[0] if single else negatives
        if first.images:
            arguments["image"] = first.images if spec.family.max_images > 1 else first.images[0]
        if first.mask is not None:
            arguments.update(mask_image=first.mask, strength=INPAINT_STRENGTH)
        return arguments


def _step_reporter(on_step: StepCallback, total: int) -> Callable[..., dict[str, Any]]:
    def report(_pipeline: Any, step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict[str, Any]:
        on_step(step + 1, total)
        return {}

    return report


def truncate_tokens(pipeline: Any, prompt: str, limit: int) -> str:
    """The hosted API silently truncates prompts beyond the model's token limit; so do we."""
    tokenizer = getattr(pipeline, "tokenizer", None) or pipeline.processor.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt if len(ids) <= limit else tokenizer.decode(ids[:limit])


class EngineRunner:
    """Async front of the engine: one worker thread, so the event loop stays free.

    ``holding()`` pauses it: a batch that comes while it is held waits on the engine thread until the block
    ends (to drain a device, or for a test to keep tasks queued without depending on inference speed).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._open = threading.Event()
        self._open.set()

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    @property
    def ready(self) -> bool:
        return self.engine.loaded

    async def load(self) -> None:
        """Loads every model on the worker thread, the thread that will run them."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.load)

    async def run_batch(self, jobs: list[Job], on_step: StepCallback | None = None) -> list[JobResult]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_when_open, jobs, on_step)

    def _run_when_open(self, jobs: list[Job], on_step: StepCallback | None) -> list[JobResult]:
        self._open.wait()
        return self.engine.run_batch(jobs, on_step)

    def close(self) -> None:
        self._open.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
