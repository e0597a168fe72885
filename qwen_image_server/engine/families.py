"""Model families: which diffusers pipeline class serves a family, and what that pipeline can do.

Torch-free on purpose: the HTTP layer reads these capabilities to validate requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str
    generates: bool
    edits: bool
    max_images: int
    batches_prompts: bool
    steps: int
    true_cfg_scale: float
    guidance_scale: float | None = None
    output_multiple: int = 16


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("qwen-image", "QwenImagePipeline", generates=True, edits=False, max_images=0,
               batches_prompts=True, steps=50, true_cfg_scale=4.0),
        Family("qwen-image-edit", "QwenImageEditPipeline", generates=False, edits=True, max_images=1,
               batches_prompts=True, steps=50, true_cfg_scale=4.0),
        Family("qwen-image-edit-plus", "QwenImageEditPlusPipeline", generates=False, edits=True,
               max_images=3, batches_prompts=False, steps=40, true_cfg_scale=4.0, guidance_scale=1.0),
        Family("qwen-image-2.1", "QwenImage21Pipeline", generates=True, edits=True, max_images=3,
               batches_prompts=True, steps=50, true_cfg_scale=4.0, output_multiple=32),
    )
}
