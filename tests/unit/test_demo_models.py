"""The tiny demo pipelines: built offline and deterministically, loaded and run like real weights."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    QwenImage21Pipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
)
from PIL import Image

from qwen_image_server.engine.demo_models import (
    DEMO_FAMILIES,
    DEMO_MODELS_VERSION,
    MARKER_NAME,
    build_demo_models,
    demo_model_path,
)

PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "qwen-image": QwenImagePipeline,
    "qwen-image-edit": QwenImageEditPipeline,
    "qwen-image-edit-plus": QwenImageEditPlusPipeline,
    "qwen-image-2.1": QwenImage21Pipeline,
}


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("demo-models")
    build_demo_models(target)
    return target


@pytest.fixture(scope="session")
def load_pipeline(models_dir: Path) -> Callable[[str], DiffusionPipeline]:
    """Each family loaded once, through the same ``from_pretrained`` call real weights go through."""

    @functools.cache
    def load(family: str) -> DiffusionPipeline:
        pipeline = PIPELINE_CLASSES[family].from_pretrained(
            demo_model_path(models_dir, family), dtype=torch.float32
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    return load


def test_builds_every_family_where_demo_model_path_says(models_dir: Path) -> None:
    assert set(PIPELINE_CLASSES) == set(DEMO_FAMILIES)
    paths = build_demo_models(models_dir)

    assert paths == {family: demo_model_path(models_dir, family) for family in DEMO_FAMILIES}
    for path in paths.values():
        assert (path / MARKER_NAME).read_text() == DEMO_MODELS_VERSION
        assert (path / "model_index.json").is_file()


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo model family"):
        demo_model_path(tmp_path, "qwen-image-max")


def test_two_builds_write_identical_bytes(models_dir: Path, tmp_path: Path) -> None:
    build_demo_models(tmp_path)

    first, second = file_bytes(models_dir), file_bytes(tmp_path)
    assert any(name.endswith(".safetensors") for name in first)
    assert first.keys() == second.keys()
    assert first == second


def test_complete_models_are_not_rebuilt(models_dir: Path) -> None:
    weights = sorted(models_dir.rglob("*.safetensors"))
    before = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in weights}

    build_demo_models(models_dir)

    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in weights} == before
    assert [path.name for path in models_dir.iterdir() if path.name.startswith(".")] == []


def test_stale_and_unmarked_models_are_rebuilt(tmp_path: Path) -> None:
    stale = demo_model_path(tmp_path, "qwen-image")
    (stale / "transformer").mkdir(parents=True)
    (stale / "transformer" / "leftover.bin").write_bytes(b"old")
    (stale / MARKER_NAME).write_text("0")
    unmarked = demo_model_path(tmp_path, "qwen-image-2.1")
    (unmarked / "vae").mkdir(parents=True)

    build_demo_models(tmp_path)

    for path in (stale, unmarked):
        assert (path / MARKER_NAME).read_text() == DEMO_MODELS_VERSION
        assert (path / "model_index.json").is_file()
    assert not (stale / "transformer" / "leftover.bin").exists()


@pytest.mark.parametrize("family", ["qwen-image", "qwen-image-edit", "qwen-image-edit-plus"])
def test_prompt_template_drop_lands_on_the_user_turn(
    family: str, load_pipeline: Callable[[str], DiffusionPipeline]
) -> None:
    """These pipelines drop a fixed count of leading tokens, counted with Qwen's real vocabulary."""
    pipeline: Any = load_pipeline(family)
    ids = pipeline.tokenizer(pipeline.prompt_template_encode.format("a red cat"))["input_ids"]
    drop = pipeline.prompt_template_encode_start_idx

    assert pipeline.tokenizer.decode(ids[:drop]).endswith("<|im_end|>\n<|im_start|>user\n")
    assert pipeline.tokenizer.decode(ids[drop:]).startswith(("a red cat", "<|vision_start|>"))


@pytest.mark.parametrize("family", ["qwen-image-edit", "qwen-image-edit-plus", "qwen-image-2.1"])
def test_text_encoder_agrees_with_tokenizer_and_processor(
    family: str, load_pipeline: Callable[[str], DiffusionPipeline]
) -> None:
    pipeline: Any = load_pipeline(family)
    config, tokenizer, images = (
        pipeline.text_encoder.config,
        pipeline.processor.tokenizer,
        pipeline.processor.image_processor,
    )

    assert min(config.vocab_size, config.text_config.vocab_size) >= len(tokenizer)
    for name, token in [
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    ]:
        assert getattr(config, name) == tokenizer.convert_tokens_to_ids(token)
    vision = config.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (
        images.patch_size,
        images.merge_size,
        images.temporal_patch_size,
    )


CALLS: dict[str, dict[str, Any]] = {
    "qwen-image": {"prompt": "a red cat", "height": 256, "width": 256},
    "qwen-image-edit": {"prompt": "make it blue", "image": noise_image(640, 480), "height": 512, "width": 512},
    "qwen-image-edit-plus": {
        "prompt": "put the cat on the sofa",
        "image": [noise_image(640, 480), noise_image(512, 512, seed=1)],
        "num_images_per_prompt": 2,
        "height": 512,
        "width": 512,
    },
    "qwen-image-2.1": {"prompt": "a red cat", "height": 256, "width": 256},
    "qwen-image-2.1-edit": {"prompt": "make it blue", "image": noise_image(640, 480), "height": 512, "width": 512},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CALLS))
def test_two_step_call(case: str, load_pipeline: Callable[[str], DiffusionPipeline]) -> None:
    family = case.removesuffix("-edit") if case.startswith("qwen-image-2.1") else case
    pipeline = load_pipeline(family)
    kwargs = CALLS[case]

    images = pipeline(
        **kwargs,
        negative_prompt="blurry",
        true_cfg_scale=2.0,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images

    assert len(images) == kwargs.get("num_images_per_prompt", 1)
    assert all(isinstance(image, Image.Image) for image in images)
    assert [image.size for image in images] == [(kwargs["width"], kwargs["height"])] * len(images)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen-image-edit", "qwen-image-2.1"])
def test_text_encoder_chats_about_an_image(family: str, load_pipeline: Callable[[str], DiffusionPipeline]) -> None:
    pipeline: Any = load_pipeline(family)
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Rewrite the prompt."}]},
        {
            "role": "user",
            "content": [{"type": "image", "image": noise_image(320, 240)}, {"type": "text", "text": "a red cat"}],
        },
    ]
    inputs = pipeline.processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )

    output = pipeline.text_encoder.generate(**inputs, max_new_tokens=4, do_sample=False)

    prompt_length = inputs["input_ids"].shape[1]
    assert prompt_length < output.shape[1] <= prompt_length + 4  # fewer if it ends its turn early
    assert isinstance(pipeline.processor.batch_decode(output[:, prompt_length:])[0], str)


@pytest.mark.slow
def test_text_encoder_chats_from_the_tokenizer_alone(load_pipeline: Callable[[str], DiffusionPipeline]) -> None:
    """Qwen-Image (text-to-image) has no processor: its tokenizer carries the chat template."""
    pipeline: Any = load_pipeline("qwen-image")
    inputs = pipeline.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a red cat"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )

    output = pipeline.text_encoder.generate(**inputs, max_new_tokens=4, do_sample=False)

    assert inputs["input_ids"].shape[1] < output.shape[1] <= inputs["input_ids"].shape[1] + 4
