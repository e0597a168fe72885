"""Each family's pipeline, loaded with ``from_pretrained`` from disk, runs through the engine."""

from __future__ import annotations

import pytest
from PIL import Image

from qwen_image_server.engine.engine import Device, Engine
from qwen_image_server.engine.registry import load_registry
from qwen_image_server.tasks.models import Job

MODELS = ["qwen-image", "qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2.0"]


@pytest.fixture(scope="module")
def engine(demo_models_dir):
    engine = Engine(load_registry("demo", demo_models_dir, None, MODELS), Device.choose_all("cpu")[0],
                    prompt_extend_max_new_tokens=8)
    engine.load()
    return engine


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


def run_counting(engine, job):
    calls = TransformerCalls(engine.pipeline(engine.registry.get(job.model)))
    try:
        return engine.run_batch([job])[0], calls.count
    finally:
        calls.close()


def test_every_served_model_is_loaded_from_disk(engine):
    assert engine.loaded
    assert {type(engine.pipeline(engine.registry.get(name))).__name__ for name in MODELS} == {
        "QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImage21Pipeline"}


def test_text_to_image_with_true_cfg_runs_two_passes_per_step(engine):
    result, passes = run_counting(engine, Job(model="qwen-image", prompt="a cat", width=256, height=256, seed=1,
                                              negative_prompt="blurry"))
    assert [image.size for image in result.images] == [(256, 256)]
    assert passes == 2 * engine.registry.get("qwen-image").steps


def test_single_image_edit(engine):
    [result] = engine.run_batch([Job(model="qwen-image-edit", prompt="add a hat", width=320, height=256, seed=2,
                                     images=[picture((640, 512))])])
    assert [image.size for image in result.images] == [(320, 256)]


def test_multi_image_edit_with_n_two_is_one_batched_call(engine):
    result, passes = run_counting(engine, Job(model="qwen-image-edit-plus", prompt="merge", width=256,
                                              height=256, seed=3, n=2, images=[picture(), picture((400, 300))]))
    assert len(result.images) == 2
    assert passes == 2 * engine.registry.get("qwen-image-edit-plus").steps


def test_qwen_image_2_generates_and_edits_without_guidance_by_default(engine):
    generated, passes = run_counting(engine, Job(model="qwen-image-2.0", prompt="a fox", width=256, height=256,
                                                 seed=4, negative_prompt="ignored without guidance"))
    assert [image.size for image in generated.images] == [(256, 256)]
    assert passes == engine.registry.get("qwen-image-2.0").steps
    [edited] = engine.run_batch([Job(model="qwen-image-2.0", prompt="snow", width=256, height=256, seed=5,
                                     images=[picture()])])
    assert [image.size for image in edited.images] == [(256, 256)]


@pytest.mark.parametrize("model, images", [("qwen-image", []), ("qwen-image-edit-plus", [picture()]),
                                           ("qwen-image-2.0", [picture()])])
def test_prompt_extend_rewrites_with_the_loaded_text_encoder(engine, model, images):
    job = Job(model=model, prompt="a dog", width=256, height=256, seed=6, images=images, prompt_extend=True)
    result = engine.run_batch([job])[0]
    assert result.actual_prompt and result.actual_prompt != "a dog"
    assert len(result.images) == 1


def test_prompt_extend_is_skipped_where_the_model_does_not_support_it(engine):
    job = Job(model="qwen-image-edit", prompt="a dog", width=256, height=256, seed=6, images=[picture()],
              prompt_extend=True)
    assert engine.run_batch([job])[0].actual_prompt is None


def test_long_prompts_are_truncated_to_the_model_token_limit(engine):
    from qwen_image_server.engine.engine import truncate_tokens

    pipeline = engine.pipeline(engine.registry.get("qwen-image"))
    long = " ".join(["word"] * 5000)
    short = truncate_tokens(pipeline, long, 800)
    assert len(pipeline.tokenizer(short, add_special_tokens=False)["input_ids"]) <= 800 < len(long.split())


def test_a_mask_runs_the_family_inpainting_pipeline_on_the_loaded_weights(engine):
    mask = Image.new("RGB", (256, 256))
    mask.paste((255, 255, 255), (0, 0, 128, 256))
    spec = engine.registry.get("qwen-image")
    result, passes = run_counting(engine, Job(model="qwen-image", prompt="a window", width=256, height=256, seed=1,
                                              images=[picture((256, 256))], mask=mask))
    inpainter = engine.inpainter(spec)
    assert type(inpainter).__name__ == "QwenImageInpaintPipeline"
    assert inpainter.transformer is engine.pipeline(engine.registry.get("qwen-image")).transformer
    assert passes == 2 * spec.steps, "the masked area is regenerated over every step, with true CFG"
    assert [image.size for image in result.images] == [(256, 256)]


def test_the_apache_preset_runs_the_20_names_on_apache_weights_by_image_count(demo_models_dir):
    from qwen_image_server.engine.registry import ModelRegistry, demo_specs

    specs = demo_specs(demo_models_dir, apache=True)
    routed = Engine(ModelRegistry({name: specs[name] for name in ("qwen-image-2.0", "qwen-image-2.1-pro")}),
                    Device.choose_all("cpu")[0], prompt_extend_max_new_tokens=8)
    routed.load()
    spec = routed.registry.get("qwen-image-2.0")
    edit_pipeline, t2i_pipeline = (routed.pipeline(spec.serving(count)) for count in (1, 0))
    assert (type(edit_pipeline).__name__, type(t2i_pipeline).__name__) == (
        "QwenImageEditPlusPipeline", "QwenImagePipeline")
    assert routed.registry.get("qwen-image-2.1-pro").rules.max_images == 3, "EditPlus takes at most 3"
    edit_calls, t2i_calls = TransformerCalls(edit_pipeline), TransformerCalls(t2i_pipeline)
    try:
        [edited] = routed.run_batch([Job(model="qwen-image-2.0", prompt="bluer", width=256, height=256, seed=1,
                                         images=[picture()])])
        [generated] = routed.run_batch([Job(model="qwen-image-2.0", prompt="a kite", width=256, height=256, seed=1)])
    finally:
        edit_calls.close()
        t2i_calls.close()
    assert edited.images[0].size == generated.images[0].size == (256, 256)
    assert edit_calls.count > 0 and t2i_calls.count > 0
