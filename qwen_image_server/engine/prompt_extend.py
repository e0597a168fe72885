"""``prompt_extend``: rewrite the instruction with the pipeline's own vision-language text encoder.

Every Qwen-Image family encodes prompts with a Qwen-VL model that is also a chat model, so the rewrite
needs no second model in memory. The chat is written in ChatML by hand, the way the pipelines write
their own prompt templates, so it works with any tokenizer or processor they load.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL.Image import Image

SYSTEM_PROMPT = (
    "You rewrite image instructions for an image model. Keep the user's intent, subjects, any quoted "
    "text and the language. Add concrete visual detail: composition, lighting, materials, style. "
    "When images are given, describe only the requested change and what must stay the same. "
    "Answer with the rewritten instruction only."
)
_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"


def chat_text(prompt: str, image_count: int) -> str:
    user = _IMAGE_SLOT * image_count + prompt
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    )


def extend_prompts(pipeline: Any, prompts: list[str], images: list[list[Image]], max_new_tokens: int) -> list[str]:
    """The rewritten prompts, in one greedy ``generate`` call over the batch (left-padded, so every row's new
    tokens follow its own prompt); a row that produced nothing usable keeps its prompt."""
    texts = [chat_text(prompt, len(seen)) for prompt, seen in zip(prompts, images, strict=True)]
    flat = [image for seen in images for image in seen]
    processor = getattr(pipeline, "processor", None)
    if processor is not None:
        inputs = processor(text=texts, images=flat or None, padding=True, padding_side="left", return_tensors="pt")
        decoder = processor.tokenizer
    else:
        inputs = pipeline.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        decoder = pipeline.tokenizer
    encoder = pipeline.text_encoder
    inputs = inputs.to(encoder.device)
    with torch.inference_mode():
        output = encoder.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    rewritten = [decoder.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
    return [rewrite or prompt for rewrite, prompt in zip(rewritten, prompts, strict=True)]
