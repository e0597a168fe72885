"""Each family's pipeline, loaded with ``from_pretrained`` from disk, runs through the engine: plans in, events out."""

from __future__ import annotations

import pytest
from PIL import Image

from qwen_image_server.engine.contract import EngineBatch, EngineJob, JobOutput, Progress
from qwen_image_server.engine.engine import Device, Engine
from qwen_image_server.engine.registry import ModelRegistry, demo_specs, load_registry

MODELS = ["qwen-image", "qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2.0"]


def engine_for(registry: ModelRegistry) -> Engine:
    plans = [variant.plan for spec in registry.specs() for variant in spec.variants()]
    engine = Engine(plans, Device.choose_all("cpu")[0], prompt_extend_max_new_tokens=8)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def registry(demo_models_dir):
    return load_registry("demo", demo_models_dir, None, MODELS)


@pytest.fixture(scope="module")
def engine(registry):
    return engine_for(registry)


def picture(size=(512, 512), colour=(30, 120, 200)):
    return Image.new("RGB", size, colour)


class TransformerCalls:
    """Counts real forward passes of a pipeline's transformer (a forward hook, not a stand-in)."""

    def __init__(self, pipeline):
        self.count = 0
        self._handle = pipeline.transformer.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.count += 1

    def close(self):
        self._handle.remove()


def run(engine, registry, model, width=256, height=256, **job) -> tuple[JobOutput, list[Progress]]:
    engine_job = EngineJob(**job)
    plan = registry.get(model).serving(len(engine_job.images)).plan
    events = list(engine.run(EngineBatch(plan, width, height, [engine_job])))
    [output] = events[-1]
    return output, events[:-1]


def run_counting(engine, registry, model, **job):
    plan = registry.get(model).serving(len(job.get("images", []))).plan
    calls = TransformerCalls(engine.pipeline(plan))
    try:
        output, progress = run(engine, registry, model, **job)
        return output, calls.count, progress
    finally:
        calls.close()


def test_every_served_model_is_loaded_from_disk(engine, registry):
    assert engine.ready()
    assert {type(engine.pipeline(registry.get(name).plan)).__name__ for name in MODELS} == {
        "QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImage21Pipeline"}


def test_text_to_image_with_true_cfg_is_one_call_per_step_and_reports_each_step(engine, registry):
    result, passes, progress = run_counting(engine, registry, "qwen-image", prompt="a cat", seed=1,
                                            negative_prompt="blurry")
    steps = registry.get("qwen-image").steps
    assert [image.size for image in result.images] == [(256, 256)]
    assert passes == steps, "conditional and unconditional rows in one transformer call"
    assert progress == [Progress(step, steps) for step in range(1, steps + 1)]


def test_single_image_edit(engine, registry):
    result, _ = run(engine, registry, "qwen-image-edit", width=320, height=256, prompt="add a hat", seed=2,
                    images=[picture((640, 512))])
    assert [image.size for image in result.images] == [(320, 256)]


def test_multi_image_edit_with_n_two(engine, registry):
    result, passes, _ = run_counting(engine, registry, "qwen-image-edit-plus", prompt="merge", seed=3, n=2,
                                     images=[picture(), picture((400, 300))])
    assert len(result.images) == 2
    assert passes == registry.get("qwen-image-edit-plus").steps


def test_qwen_image_2_generates_and_edits_without_guidance_by_default(engine, registry):
    generated, passes, _ = run_counting(engine, registry, "qwen-image-2.0", prompt="a fox", seed=4,
                                        negative_prompt="ignored without guidance")
    assert [image.size for image in generated.images] == [(256, 256)]
    assert passes == registry.get("qwen-image-2.0").steps
    edited, _ = run(engine, registry, "qwen-image-2.0", prompt="snow", seed=5, images=[picture()])
    assert [image.size for image in edited.images] == [(256, 256)]


@pytest.mark.parametrize("model, images", [("qwen-image", []), ("qwen-image-edit-plus", [picture()]),
                                           ("qwen-image-2.0", [picture()])])
def test_prompt_extend_rewrites_with_the_loaded_text_encoder(engine, registry, model, images):
    result, _ = run(engine, registry, model, prompt="a dog", seed=6, images=images, prompt_extend=True)
    assert result.actual_prompt and result.actual_prompt != "a dog"
    assert len(result.images) == 1


def test_prompt_extend_rewrites_a_batch_in_one_generate_call(engine, registry):
    plan = registry.get("qwen-image").plan
    pipeline = engine.pipeline(plan)
    calls = []
    original = pipeline.text_encoder.generate
    pipeline.text_encoder.generate = lambda **kwargs: calls.append(kwargs["input_ids"].shape[0]) or original(**kwargs)
    try:
        jobs = [EngineJob(prompt=prompt, seed=1, prompt_extend=True) for prompt in ("a dog", "a lighthouse at dusk")]
        *_, outputs = engine.run(EngineBatch(plan, 256, 256, jobs))
    finally:
        del pipeline.text_encoder.generate
    assert calls == [2]
    assert all(output.actual_prompt for output in outputs)


def test_long_prompts_are_truncated_to_the_model_token_limit(engine, registry):
    pipeline = engine.pipeline(registry.get("qwen-image").plan)
    long = " ".join(["word"] * 5000)
    short = Engine._truncated(pipeline, long, 800)
    assert len(pipeline.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 800 < len(long.split())


def test_a_mask_runs_the_family_inpainting_pipeline_on_the_loaded_weights(engine, registry):
    mask = Image.new("RGB", (256, 256))
    mask.paste((255, 255, 255), (0, 0, 128, 256))
    plan = registry.get("qwen-image").plan
    result, passes, progress = run_counting(engine, registry, "qwen-image", prompt="a window", seed=1,
                                            images=[picture((256, 256))], mask=mask)
    inpainter = engine._inpainters[plan.load_key]
    assert type(inpainter).__name__ == "QwenImageInpaintPipeline"
    assert inpainter.transformer is engine.pipeline(plan).transformer
    assert passes == 2 * plan.steps, "the masked area is regenerated over every step, with true CFG"
    assert [image.size for image in result.images] == [(256, 256)] and len(progress) == plan.steps


def test_the_apache_preset_runs_the_20_names_on_apache_weights_by_image_count(demo_models_dir):
    specs = demo_specs(demo_models_dir, apache=True)
    registry = ModelRegistry({name: specs[name] for name in ("qwen-image-2.0", "qwen-image-2.1-pro")})
    routed = engine_for(registry)
    spec = registry.get("qwen-image-2.0")
    edit_pipeline, t2i_pipeline = (routed.pipeline(spec.serving(count).plan) for count in (1, 0))
    assert (type(edit_pipeline).__name__, type(t2i_pipeline).__name__) == (
        "QwenImageEditPlusPipeline", "QwenImagePipeline")
    assert registry.get("qwen-image-2.1-pro").rules.max_images == 3, "EditPlus takes at most 3"
    edit_calls, t2i_calls = TransformerCalls(edit_pipeline), TransformerCalls(t2i_pipeline)
    try:
        edited, _ = run(routed, registry, "qwen-image-2.0", prompt="bluer", seed=1, images=[picture()])
        generated, _ = run(routed, registry, "qwen-image-2.0", prompt="a kite", seed=1)
    finally:
        edit_calls.close()
        t2i_calls.close()
    assert edited.images[0].size == generated.images[0].size == (256, 256)
    assert edit_calls.count > 0 and t2i_calls.count > 0
