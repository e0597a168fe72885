"""Model families: which diffusers pipeline class serves a family, what it can do, and its defaults.

``true_cfg_scale`` > 1 turns on true classifier-free guidance, with the request's negative prompt.
``inpaint_pipeline_class``: the family's diffusers inpainting pipeline, built from the loaded pipeline's
components, for edits with a mask; None where diffusers has none.

Torch-free on purpose: the HTTP layer reads these capabilities to validate requests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    pipeline_class: str
    max_images: int
    steps: int
    true_cfg_scale: float
    output_multiple: int = 16
    inpaint_pipeline_class: str | None = None


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("qwen-image", "QwenImagePipeline", max_images=0, steps=50, true_cfg_scale=4.0,
               inpaint_pipeline_class="QwenImageInpaintPipeline"),
        Family("qwen-image-edit", "QwenImageEditPipeline", max_images=1, steps=50, true_cfg_scale=4.0,
               inpaint_pipeline_class="QwenImageEditInpaintPipeline"),
        Family("qwen-image-edit-plus", "QwenImageEditPlusPipeline", max_images=3, steps=40, true_cfg_scale=4.0),
        # Qwen recommends 40 steps without guidance for 2.1; an operator may raise true_cfg_scale.
        Family("qwen-image-2.1", "QwenImage21Pipeline", max_images=10, steps=40, true_cfg_scale=1.0,
               output_multiple=32),
    )
}
