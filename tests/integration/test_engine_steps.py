"""Golden tests: our numbered steps against diffusers' own pipelines on the tiny models (float32, CPU).

Same inputs and seed → the same pixels as the pipeline's ``__call__``, within 1e-4; conditional and
unconditional passes in one transformer call equal two calls, with half the calls; a batch of different
jobs equals each job run alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from qwen_image_server.engine.contract import EngineBatch, EngineJob, Options, Plan
from qwen_image_server.engine.engine import STEPS, Device, Engine
from qwen_image_server.engine.registry import demo_specs
from qwen_image_server.engine.steps.base import BLANK_NEGATIVE_PROMPT

TOLERANCE = 1e-4
STEPS_RUN = 3
SIZE = (256, 256)


@pytest.fixture(scope="module")
def pipelines(demo_models_dir):
    """One loaded pipeline per family (the engine's own loader), and each family's plan."""
    specs = demo_specs(demo_models_dir)
    plans = {family: replace(specs[name].plan, steps=STEPS_RUN) for family, name in [
        ("qwen-image", "qwen-image"), ("qwen-image-edit", "qwen-image-edit"),
        ("qwen-image-edit-plus", "qwen-image-edit-plus"), ("qwen-image-2.1", "qwen-image-2.0")]}
    engine = Engine(list(plans.values()), Device.choose_all("cpu")[0], prompt_extend_max_new_tokens=8)
    engine.load()
    return engine, plans


def picture(size, colour):
    gradient = Image.linear_gradient("L").resize(size).convert("RGB")
    return Image.blend(gradient, Image.new("RGB", size, colour), 0.5)


def ours(engine, plan, jobs, cfg_batch=True, size=SIZE):
    steps = STEPS[plan.family](engine.pipeline(plan), cfg_batch)
    batch = EngineBatch(plan, size[0], size[1], jobs)
    with torch.inference_mode():
        *_progress, outputs = steps.run(batch, [job.prompt for job in jobs], output_type="np")
    return [np.stack(images) for images in outputs]


def theirs(engine, plan, job, size=SIZE):
    pipeline = engine.pipeline(plan)
    arguments = {"prompt": job.prompt, "width": size[0], "height": size[1], "num_inference_steps": plan.steps,
                 "true_cfg_scale": plan.guidance, "num_images_per_prompt": job.n, "output_type": "np",
                 "generator": [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.n)]}
    if plan.guidance > 1:
        arguments["negative_prompt"] = job.negative_prompt or BLANK_NEGATIVE_PROMPT
    if job.images:
        arguments["image"] = job.images if plan.family in ("qwen-image-edit-plus", "qwen-image-2.1") else job.images[0]
    with torch.inference_mode():
        return pipeline(**arguments).images


CASES = {
    "t2i": ("qwen-image", 0, 2),
    "edit": ("qwen-image-edit", 1, 1),
    "edit-plus-1": ("qwen-image-edit-plus", 1, 2),
    "edit-plus-3": ("qwen-image-edit-plus", 3, 1),
    "2.1-t2i": ("qwen-image-2.1", 0, 2),
    "2.1-edit": ("qwen-image-2.1", 2, 1),
}
COLOURS = [(200, 80, 40), (30, 120, 200), (60, 200, 90)]
SHAPES = [(320, 256), (256, 384), (300, 300)]


def job_for(images: int, n: int, prompt="a red fox in the snow", negative="blurry, dark", seed=7):
    return EngineJob(prompt=prompt, negative_prompt=negative, seed=seed, n=n,
                     images=[picture(SHAPES[i], COLOURS[i]) for i in range(images)])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("guided", [True, False], ids=["cfg", "no-cfg"])
def test_our_steps_equal_the_diffusers_pipeline(pipelines, case, guided):
    engine, plans = pipelines
    family, images, n = CASES[case]
    plan = replace(plans[family], guidance=4.0 if guided else 1.0)
    job = job_for(images, n)
    [mine] = ours(engine, plan, [job])
    reference = theirs(engine, plan, job)
    assert mine.shape == reference.shape and mine.shape[:3] == (n, SIZE[1], SIZE[0])
    assert np.abs(mine - reference).max() <= TOLERANCE


def as_long_as(engine, plan, prompt):
    """A different negative prompt that encodes to as many tokens (2.1 batches the two passes only then)."""
    pipeline = engine.pipeline(plan)
    tokenizer = getattr(pipeline, "tokenizer", None) or pipeline.processor.tokenizer
    length = len(tokenizer(prompt)["input_ids"])
    return next(text for text in ("a cat", "an owl", "a dog", "the sea", "blurry", "a car", "dark")
                if len(tokenizer(text)["input_ids"]) == length)


class TransformerCalls:
    def __init__(self, transformer):
        self.count = 0
        self._handle = transformer.register_forward_hook(self._hook)

    def _hook(self, *_args):
        self.count += 1

    def close(self):
        self._handle.remove()


@pytest.mark.parametrize("family", ["qwen-image", "qwen-image-edit-plus", "qwen-image-2.1"])
def test_cfg_in_one_call_equals_two_calls_with_half_the_calls(pipelines, family):
    engine, plans = pipelines
    plan = replace(plans[family], guidance=4.0)
    job = job_for(1 if family != "qwen-image" else 0, 1, prompt="a fox", negative=as_long_as(engine, plan, "a fox"))
    counts = {}
    results = {}
    for batched in (True, False):
        calls = TransformerCalls(engine.pipeline(plan).transformer)
        try:
            [results[batched]] = ours(engine, plan, [job], cfg_batch=batched)
        finally:
            calls.close()
        counts[batched] = calls.count
    assert np.abs(results[True] - results[False]).max() <= TOLERANCE
    assert counts == {True: STEPS_RUN, False: 2 * STEPS_RUN}


@pytest.mark.parametrize("family", ["qwen-image", "qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2.1"])
def test_a_batch_of_different_jobs_equals_each_job_alone(pipelines, family):
    engine, plans = pipelines
    plan = replace(plans[family], guidance=4.0)
    images = 0 if family == "qwen-image" else 1
    jobs = [
        job_for(images, 2, prompt="a red fox in the snow", negative="blurry", seed=3),
        replace(job_for(images, 2, prompt="a lighthouse at dusk, oil painting", negative="", seed=11),
                images=[picture(SHAPES[0], (10, 10, 240))] if images else []),
    ]
    together = ours(engine, plan, jobs)
    alone = [ours(engine, plan, [job])[0] for job in jobs]
    for mine, single in zip(together, alone, strict=True):
        assert np.abs(mine - single).max() <= TOLERANCE
    assert np.abs(together[0] - together[1]).max() > 0.01, "the jobs really differ"


def test_options_are_part_of_what_a_pipeline_is_loaded_as(pipelines):
    _, plans = pipelines
    plan = plans["qwen-image"]
    assert plan.load_key != replace(plan, options=Options(cfg_batch=False)).load_key
    assert isinstance(plan, Plan)
