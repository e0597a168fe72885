"""The engine: loads diffusers pipelines and runs jobs on them. The only module that imports torch.

One pipeline is loaded per distinct weights source, so every API name that maps to the same weights
shares it. ``Engine.run`` blocks; ``EngineRunner`` runs it on a single worker thread so inference never
blocks the event loop and jobs never compete for one device.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import diffusers
import torch

from qwen_image_server.engine.prompt_extend import extend_prompt
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec
from qwen_image_server.errors import ModelUnavailable
from qwen_image_server.tasks.models import Job, JobResult

log = logging.getLogger(__name__)

BLANK_NEGATIVE_PROMPT = " "  # what the Qwen-Image model cards pass when there is no negative prompt


@dataclass(frozen=True)
class Device:
    name: str
    dtype: torch.dtype

    @classmethod
    def choose(cls, preference: str) -> Device:
        use_cuda = preference == "cuda" or (preference == "auto" and torch.cuda.is_available())
        return cls("cuda", torch.bfloat16) if use_cuda else cls("cpu", torch.float32)


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

    @property
    def loaded(self) -> bool:
        return all(spec.source in self._pipelines for spec in self.registry.specs())

    def load(self) -> None:
        for spec in self.registry.specs():
            if spec.source not in self._pipelines:
                started = time.perf_counter()
                self._pipelines[spec.source] = load_pipeline(spec, self.device)
                log.info("loaded %s (%s) from %s in %.1f s", spec.family.pipeline_class, spec.name,
                         spec.source, time.perf_counter() - started)

    def pipeline(self, model: str) -> Any:
        pipeline = self._pipelines.get(self.registry.get(model).source)
        if pipeline is None:
            raise ModelUnavailable(f"Model {model!r} is not loaded (still loading, or it failed to load).")
        return pipeline

    def run(self, job: Job) -> JobResult:
        started = time.perf_counter()
        spec = self.registry.get(job.model)
        pipeline = self.pipeline(job.model)
        prompt = truncate_tokens(pipeline, job.prompt, spec.rules.prompt_token_limit)
        actual_prompt = None
        if job.prompt_extend and spec.rules.prompt_extend:
            actual_prompt = extend_prompt(pipeline, prompt, job.images, self.prompt_extend_max_new_tokens)
            log.info("prompt_extend rewrote %r as %r", prompt, actual_prompt)
        with torch.inference_mode():
            output = pipeline(**self.pipeline_arguments(spec, job, actual_prompt or prompt))
        return JobResult(images=list(output.images), actual_prompt=actual_prompt,
                         seconds=time.perf_counter() - started)

    def pipeline_arguments(self, spec: ModelSpec, job: Job, prompt: str) -> dict[str, Any]:
        """One batched call for all ``n`` images; image ``i`` is seeded with ``seed + i``."""
        arguments: dict[str, Any] = {
            "prompt": prompt,
            "width": job.width,
            "height": job.height,
            "num_inference_steps": spec.steps,
            "true_cfg_scale": spec.true_cfg_scale,
            "num_images_per_prompt": job.n,
            "generator": [torch.Generator(self.device.name).manual_seed(job.seed + i) for i in range(job.n)],
        }
        if spec.true_cfg_scale > 1:
            arguments["negative_prompt"] = job.negative_prompt or BLANK_NEGATIVE_PROMPT
        if job.images:
            arguments["image"] = job.images if spec.family.max_images > 1 else job.images[0]
        return arguments


def truncate_tokens(pipeline: Any, prompt: str, limit: int) -> str:
    """The hosted API silently truncates prompts beyond the model's token limit; so do we."""
    tokenizer = getattr(pipeline, "tokenizer", None) or pipeline.processor.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt if len(ids) <= limit else tokenizer.decode(ids[:limit])


class EngineRunner:
    """Async front of the engine: one worker thread, so the event loop stays free."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    @property
    def ready(self) -> bool:
        return self.engine.loaded

    async def load(self, prepare: Callable[[], object] | None = None) -> None:
        """Runs ``prepare`` (e.g. building demo models) then loads every model, on the worker thread."""

        def prepare_and_load() -> None:
            if prepare is not None:
                prepare()
            self.engine.load()

        await asyncio.get_running_loop().run_in_executor(self._executor, prepare_and_load)

    async def run(self, job: Job) -> JobResult:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.engine.run, job)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
