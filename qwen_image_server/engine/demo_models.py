"""Tiny random-weight Qwen-Image pipelines, built offline, for tests and demos.

Each family gets every component its real checkpoint has -- transformer, VAE, vision-language text
encoder, tokenizer and processor, scheduler -- built from the real classes with the real config
layout, only tiny and with random weights. They are saved with ``save_pretrained``, so the server
loads them through exactly the ``from_pretrained`` path that real weights take, and every
pipeline step (prompt template, vision tokens, VAE, denoising loop) runs for real.

Building needs no network: the tokenizer is trained here on a few sentences, and the weights come
from a fixed seed, so two builds write byte-identical files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    AutoencoderKLQwenImage21,
    FlowMatchEulerDiscreteScheduler,
    QwenImage21Pipeline,
    QwenImage21Transformer2DModel,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

# Bump whenever a builder changes what it writes: models marked with another version are rebuilt.
DEMO_MODELS_VERSION = "1"
MARKER_NAME = ".complete"
_SEED = 0

# Qwen's own special tokens, in Qwen's order; the pipelines' prompt templates use the first three
# and the vision ones, and the processors expand `<|image_pad|>` into one token per merged patch.
_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The pipelines drop a fixed number of leading tokens (their system prompt) from the encoder's output:
# 34 for Qwen-Image, 64 for the edit pipelines, counted with Qwen's real vocabulary, where every word
# of those prompts is one token. Training on the prompts themselves gives the same one-token words,
# so the drop lands exactly at the start of the user's turn, as with the real checkpoints.
_TOKENIZER_CORPUS = (
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:",
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input "
    "where appropriate.",
    "Comprehend and analyze the provided prompt.",
    "system user assistant",
    "You are a helpful assistant. Rewrite the prompt for an image model: Picture 1: a red cat and a "
    "blue dog sitting on a green sofa in a bright room, photo, painting, style.",
)
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

# Qwen's chat format, for running the text encoder as a chat model (prompt rewriting). Unlike
# Qwen2.5-VL's own template it adds no default system turn, like Qwen3-VL's: QwenImage21Pipeline
# counts the tokens of its system turn with this template.
_CHAT_TEMPLATE = r"""
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- else -%}
{%- for item in message['content'] -%}
{%- if item['type'] == 'image' -%}
{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif item['type'] == 'video' -%}
{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif item['type'] == 'text' -%}
{{- item['text'] -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}
"""

# The schedule of the real checkpoints (Qwen-Image, the edit models and 2.1 share it): resolution-
# dependent exponential shift, which the pipelines drive through `mu`.
_SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}

_TEXT_DIM = 32  # hidden size of both tiny text encoders, and so the transformers' context size

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _seeded(build: Callable[_P, _R]) -> Callable[_P, _R]:
    """Seed torch before a component is built, so its weights do not depend on build order."""

    @functools.wraps(build)
    def seeded_build(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        torch.manual_seed(_SEED)
        return build(*args, **kwargs)

    return seeded_build


def _tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens, trained offline."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer)
    trained = json.loads(bpe.to_str())["model"]
    # Pairs, as the `tokenizers` BPE model takes them (transformers annotates them as strings).
    merges: Any = [tuple(merge) for merge in trained["merges"]]
    return Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        extra_special_tokens=list(_SPECIAL_TOKENS[1:]),
        chat_template=_CHAT_TEMPLATE,
        model_max_length=32768,
    )


def _vocab_size(tokenizer: Qwen2Tokenizer) -> int:
    """The embedding must cover every token id; real checkpoints pad it to a round size."""
    return 64 * math.ceil(len(tokenizer) / 64)


def _token_ids(tokenizer: Qwen2Tokenizer) -> dict[str, Any]:
    """The special-token ids the vision-language configs carry, taken from the tokenizer."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _text_config(tokenizer: Qwen2Tokenizer, mrope_section: list[int], **extra: object) -> dict[str, Any]:
    """A 2-layer language model: 2 heads of 16, M-RoPE split over (time, height, width)."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "vocab_size": _vocab_size(tokenizer),
        "hidden_size": _TEXT_DIM,
        "intermediate_size": 2 * _TEXT_DIM,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope_section},
        **extra,
    }


def _chat_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Make ``generate`` stop at the end of the assistant's turn, as Qwen's generation config does."""
    ids = tokenizer.convert_tokens_to_ids
    return GenerationConfig(
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
    )


@_seeded
def _qwen25_vl_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """Qwen2.5-VL, the text encoder of Qwen-Image and its edit models: 14-pixel patches, merged 2x2."""
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, mrope_section=[2, 3, 3]),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": _TEXT_DIM,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        vocab_size=_vocab_size(tokenizer),  # type: ignore[call-arg]  # read at the top level; not in the stubs
        **_token_ids(tokenizer),
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = _chat_generation_config(tokenizer)
    return model


@_seeded
def _qwen3_vl_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen3VLForConditionalGeneration:
    """Qwen3-VL, the text encoder of Qwen-Image 2.1.

    One merged vision token must cover 32x32 pixels, the 2x2 group of 16x latents the 2.1 transformer
    puts in its place: hence 16-pixel patches merged 2x2, as in the real model.
    """
    config = Qwen3VLConfig(
        text_config=_text_config(tokenizer, mrope_section=[4, 2, 2], head_dim=16),
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": _TEXT_DIM,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        vocab_size=_vocab_size(tokenizer),  # type: ignore[call-arg]  # read at the top level; not in the stubs
        **_token_ids(tokenizer),
    )
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config = _chat_generation_config(tokenizer)
    return model


def _qwen2_vl_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """Qwen2.5-VL's processor, with the real checkpoint's patching and pixel bounds."""
    patching: dict[str, Any] = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, **patching),
        video_processor=Qwen2VLVideoProcessor(**patching),
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
    )


def _qwen3_vl_processor(tokenizer: Qwen2Tokenizer) -> Qwen3VLProcessor:
    """Qwen3-VL's processor, with the real checkpoint's patching, pixel bounds and normalization."""
    patching: dict[str, Any] = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            size={"shortest_edge": 65536, "longest_edge": 16777216},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
            **patching,
        ),
        video_processor=Qwen3VLVideoProcessor(**patching),
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(**_SCHEDULER_CONFIG)


@_seeded
def _qwen_image_transformer() -> QwenImageTransformer2DModel:
    """The double-stream transformer: 2 layers of 2 heads x 16; 2x2 patches of 16 latent channels."""
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
    )


@_seeded
def _qwen_image_vae() -> AutoencoderKLQwenImage:
    """An 8x VAE with the real stage layout and 16 latent channels, only 8 base channels wide.

    The edit pipelines encode every input at about 1 megapixel whatever the output size, and the
    VAE's cost there is set by its depth: with 8x (not diffusers' 4x test config) the mid-block
    attends over 128x128 positions instead of 256x256, and an edit takes seconds, not tens of them.
    """
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


@_seeded
def _qwen_image21_transformer() -> QwenImage21Transformer2DModel:
    """The single-stream block-causal transformer of 2.1: 2 layers of 2 heads x 16, 64 channels."""
    return QwenImage21Transformer2DModel(
        in_channels=64,
        out_channels=64,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        context_in_dim=_TEXT_DIM,
        axes_dims_rope=(4, 6, 6),
    )


@_seeded
def _qwen_image21_vae() -> AutoencoderKLQwenImage21:
    """The 16x RGBA VAE of 2.1 (which hard-codes 16x) with 64 latent channels, 8 base channels wide."""
    return AutoencoderKLQwenImage21(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=64,
        dim_mult=[1, 2, 4, 8, 8],
        num_res_blocks=1,
        temperal_downsample=[False, True, True, True],
    )


def _qwen_image() -> QwenImagePipeline:
    tokenizer = _tokenizer()
    return QwenImagePipeline(
        transformer=_qwen_image_transformer(),
        vae=_qwen_image_vae(),
        text_encoder=_qwen25_vl_text_encoder(tokenizer),
        tokenizer=tokenizer,
        scheduler=_scheduler(),
    )


def _qwen_image_edit_components() -> dict[str, object]:
    """Qwen-Image-Edit and Edit-Plus share their architecture; only the pipeline code differs."""
    tokenizer = _tokenizer()
    return {
        "transformer": _qwen_image_transformer(),
        "vae": _qwen_image_vae(),
        "text_encoder": _qwen25_vl_text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "processor": _qwen2_vl_processor(tokenizer),
        "scheduler": _scheduler(),
    }


def _qwen_image_edit() -> QwenImageEditPipeline:
    return QwenImageEditPipeline(**_qwen_image_edit_components())


def _qwen_image_edit_plus() -> QwenImageEditPlusPipeline:
    return QwenImageEditPlusPipeline(**_qwen_image_edit_components())


def _qwen_image_21() -> QwenImage21Pipeline:
    tokenizer = _tokenizer()
    return QwenImage21Pipeline(
        transformer=_qwen_image21_transformer(),
        vae=_qwen_image21_vae(),
        text_encoder=_qwen3_vl_text_encoder(tokenizer),
        processor=_qwen3_vl_processor(tokenizer),
        scheduler=_scheduler(),
    )


_BUILDERS: dict[str, Callable[[], Any]] = {  # each a diffusers pipeline of its family
    "qwen-image": _qwen_image,
    "qwen-image-edit": _qwen_image_edit,
    "qwen-image-edit-plus": _qwen_image_edit_plus,
    "qwen-image-2.1": _qwen_image_21,
}
DEMO_FAMILIES: tuple[str, ...] = tuple(_BUILDERS)


def demo_model_path(target_dir: Path, family: str) -> Path:
    """Where ``build_demo_models(target_dir)`` puts the model of ``family``."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown demo model family {family!r}; known: {', '.join(DEMO_FAMILIES)}")
    return target_dir / family


def build_demo_models(target_dir: Path) -> dict[str, Path]:
    """Build every demo family under ``target_dir`` unless already built; return ``{family: path}``.

    A family counts as built when its marker file holds ``DEMO_MODELS_VERSION``. A family is saved
    into a staging directory and renamed into place with its marker, so a crash never leaves a
    half-written model that looks complete, and concurrent builders each end with a complete model.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    return {family: _ensure_built(target_dir, family) for family in DEMO_FAMILIES}


def _is_complete(path: Path) -> bool:
    marker = path / MARKER_NAME
    return marker.is_file() and marker.read_text() == DEMO_MODELS_VERSION


def _ensure_built(target_dir: Path, family: str) -> Path:
    path = demo_model_path(target_dir, family)
    if _is_complete(path):
        return path
    with _staging_dir(target_dir, family) as staging:
        _BUILDERS[family]().save_pretrained(staging)
        (staging / MARKER_NAME).write_text(DEMO_MODELS_VERSION)
        if not _is_complete(path):  # another process may have finished it meanwhile
            shutil.rmtree(path, ignore_errors=True)  # stale version, or a crashed build
            try:
                staging.rename(path)
            except OSError:  # a concurrent builder renamed its identical copy in first
                if not _is_complete(path):
                    raise
    return path


@contextlib.contextmanager
def _staging_dir(target_dir: Path, family: str) -> Iterator[Path]:
    """A fresh directory beside the target (same file system, so renaming it is atomic), removed on exit."""
    path = Path(tempfile.mkdtemp(prefix=f".{family}.", dir=target_dir))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
