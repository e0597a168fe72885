"""Per-step engine time: our numbered steps against the diffusers pipeline's ``__call__`` on the same tiny model,
the same job and the same process, runs alternating.

A step's time is the gap between consecutive step ends: our engine's ``Progress`` events, the pipeline's
``callback_on_step_end``. The first step of each run is left out (it carries the run's set-up). Under true CFG
the pipeline makes two transformer calls per step and we make one with both passes in it. Printed: the median
step time of each side over all runs, and the ratio ours/diffusers (goal: at most 1.02).

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

import torch
from PIL import Image

if __package__ in (None, ""):  # run as ``python bench/engine_steps.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.processes import DEFAULT_DEMO_MODELS
from qwen_image_server.engine.contract import EngineBatch, EngineJob, Progress
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.engine import Device, Engine
from qwen_image_server.engine.registry import demo_specs
from qwen_image_server.engine.steps.base import BLANK_NEGATIVE_PROMPT


@dataclass
class Scale:
    steps: int
    runs: int
    size: int


FULL = Scale(steps=8, runs=5, size=512)
QUICK = Scale(steps=3, runs=1, size=256)


@dataclass
class Result:
    model: str
    steps: int
    ours: list[float]
    theirs: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ours) / statistics.median(self.theirs)


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
    job = EngineJob(prompt="a red fox in the snow", negative_prompt="blurry", seed=1, images=[image])
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(scale.runs):
        ends = [time.perf_counter()]
        for event in engine.run(EngineBatch(plan, scale.size, scale.size, [job])):
            if isinstance(event, Progress):
                ends.append(time.perf_counter())
        ours += gaps(ends)

        ends = [time.perf_counter()]

        def step_end(_pipeline, _step, _timestep, _tensors, marks=ends):
            marks.append(time.perf_counter())
            return {}

        with torch.inference_mode():
            pipeline(prompt=job.prompt, negative_prompt=job.negative_prompt or BLANK_NEGATIVE_PROMPT, image=[image],
                     width=scale.size, height=scale.size, num_inference_steps=plan.steps,
                     true_cfg_scale=plan.guidance, generator=torch.Generator("cpu").manual_seed(job.seed),
                     callback_on_step_end=step_end)
        theirs += gaps(ends)
    return Result(model, plan.steps, ours, theirs)


def print_table(result: Result) -> None:
    print(f"{result.model} demo, {result.steps} steps, true CFG; per-step seconds over {len(result.ours)} steps "
          f"each (first step of each run left out)\n")
    print("| engine | median s/step | min | max | transformer calls per step |")
    print("|---|---|---|---|---|")
    for name, values, calls in (("ours (numbered steps, CFG in one call)", result.ours, 1),
                                ("diffusers __call__", result.theirs, 2)):
        print(f"| {name} | {statistics.median(values):.4f} | {min(values):.4f} | {max(values):.4f} | {calls} |")
    print(f"\nratio ours/diffusers (medians): {result.ratio:.3f}")


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
