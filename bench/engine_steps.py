"""Per-step engine time: our numbered steps against the diffusers pipeline's ``__call__`` on the same tiny model,
the same job and the same process, runs alternating.

A step's time is the gap between consecutive step ends: our engine's ``Progress`` events, the pipeline's
``callback_on_step_end``. The first step of each run is left out (it carries the run's set-up). Under true CFG
the pipeline makes two transformer calls per step; we make one with both passes in it (``cfg_batch``, the
default), or two. The negative prompt is either as long as the prompt in tokens, or not: then the joint call
pads the shorter text and needs an attention mask, which on a CPU moves attention off its fastest kernel.
Printed: the median step time of each variant over all runs, and each ratio to diffusers (goal: at most 1.02).

    python bench/engine_steps.py                 # EditPlus, 512x512 with one 512x512 reference, CFG 4
    python bench/engine_steps.py --quick         # what the test suite runs
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

if __package__ in (None, ""):  # run as ``python bench/engine_steps.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import DEFAULT_DEMO_MODELS
from qwen_image_server.engine.contract import EngineBatch, EngineJob, Plan, Progress
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.engine import STEPS, Device, Engine
from qwen_image_server.engine.registry import demo_specs
from qwen_image_server.engine.steps.base import BLANK_NEGATIVE_PROMPT


@dataclass
class Scale:
    steps: int
    runs: int
    size: int


FULL = Scale(steps=8, runs=5, size=512)
QUICK = Scale(steps=3, runs=1, size=256)


VARIANTS = ("diffusers __call__", "ours, CFG in one call", "ours, two calls")
NEGATIVES = {"as long as the prompt": "a red fox in the snow", "shorter (padded, masked)": "blurry"}


@dataclass
class Result:
    model: str
    steps: int
    seconds: dict[tuple[str, str], list[float]]  # (negative prompt, variant) -> per-step seconds

    def median(self, negative: str, variant: str) -> float:
        return statistics.median(self.seconds[negative, variant])

    def ratio(self, negative: str, variant: str) -> float:
        return self.median(negative, variant) / self.median(negative, VARIANTS[0])


def gaps(ends: list[float]) -> list[float]:
    """The times between step ends, without the first step (``ends[0]`` is the run's start)."""
    return [later - earlier for earlier, later in itertools.pairwise(ends[1:])]


def run(scale: Scale, demo_dir: Path, model: str = "qwen-image-edit-plus") -> Result:
    build_demo_models(demo_dir)
    plan = replace(demo_specs(demo_dir)[model].plan, steps=scale.steps)
    engine = Engine([plan], Device.choose_all("cpu")[0], prompt_extend_max_new_tokens=8)
    engine.load()
    pipeline = engine.pipeline(plan)
    image = Image.linear_gradient("L").resize((scale.size, scale.size)).convert("RGB")
    seconds: dict[tuple[str, str], list[float]] = {(negative, variant): [] for negative in NEGATIVES
                                                   for variant in VARIANTS}
    for _ in range(scale.runs):
        for negative, text in NEGATIVES.items():
            job = EngineJob(prompt="a red fox in the snow", negative_prompt=text, seed=1, images=[image])
            seconds[negative, VARIANTS[0]] += diffusers_steps(pipeline, plan, job, scale.size)
            for variant, joined in zip(VARIANTS[1:], (True, False), strict=True):
                seconds[negative, variant] += our_steps(engine, plan, job, scale.size, joined)
    return Result(model, plan.steps, seconds)


def our_steps(engine: Engine, plan: Plan, job: EngineJob, size: int, cfg_batch: bool) -> list[float]:
    steps = STEPS[plan.family](engine.pipeline(plan), cfg_batch)
    ends = [time.perf_counter()]
    with torch.inference_mode():
        for event in steps.run(EngineBatch(plan, size, size, [job]), [job.prompt]):
            if isinstance(event, Progress):
                ends.append(time.perf_counter())
    return gaps(ends)


def diffusers_steps(pipeline: Any, plan: Plan, job: EngineJob, size: int) -> list[float]:
    ends = [time.perf_counter()]

    def step_end(_pipeline: Any, _step: int, _timestep: Any, _tensors: Any) -> dict[str, Any]:
        ends.append(time.perf_counter())
        return {}

    with torch.inference_mode():
        pipeline(prompt=job.prompt, negative_prompt=job.negative_prompt or BLANK_NEGATIVE_PROMPT, image=job.images,
                 width=size, height=size, num_inference_steps=plan.steps, true_cfg_scale=plan.guidance,
                 generator=torch.Generator("cpu").manual_seed(job.seed), callback_on_step_end=step_end)
    return gaps(ends)


def print_table(result: Result) -> None:
    count = len(next(iter(result.seconds.values())))
    print(f"{result.model} demo, {result.steps} steps, true CFG; per-step seconds, {count} steps per variant "
          f"(first step of each run left out), variants alternating in one process\n")
    print("| negative prompt | engine | median s/step | min | max | transformer calls per step | ratio to diffusers |")
    print("|---|---|---|---|---|---|---|")
    for negative in NEGATIVES:
        for variant, calls in zip(VARIANTS, (2, 1, 2), strict=True):
            values = result.seconds[negative, variant]
            print(f"| {negative} | {variant} | {statistics.median(values):.4f} | {min(values):.4f} "
                  f"| {max(values):.4f} | {calls} | {result.ratio(negative, variant):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few short runs at a small size")
    parser.add_argument("--model", default="qwen-image-edit-plus")
    parser.add_argument("--demo-models", type=Path, default=DEFAULT_DEMO_MODELS)
    arguments = parser.parse_args()
    print_table(run(QUICK if arguments.quick else FULL, arguments.demo_models, arguments.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
