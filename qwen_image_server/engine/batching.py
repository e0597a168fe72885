"""Which jobs may share one engine run: decided by the engine's rules, torch-free so the task layer can tag a
task with its key when it is stored, and workers claim compatible tasks together.

Jobs share a run when their transformer inputs line up row for row: the same weights and options, steps and
guidance, output size and ``n``, and the same number of condition images with the same latent shapes (each
condition image is resized to about 1 MP at its aspect ratio, sides rounded to 32). Prompts, negative
prompts, seeds and the images themselves may all differ. Inpainting (a mask) runs alone, on diffusers'
pipeline.
"""

from __future__ import annotations

from qwen_image_server.engine.contract import Plan

CONDITION_AREA = 1024 * 1024


def condition_size(width: int, height: int, area: int = CONDITION_AREA) -> tuple[int, int]:
    """The size the pipelines resize a condition image to: ``area`` pixels at its aspect, sides rounded to 32."""
    ratio = width / height
    target_width = (area * ratio) ** 0.5
    return round(target_width / 32) * 32, round(target_width / ratio / 32) * 32


def batch_key(plan: Plan, n: int, width: int, height: int, image_sizes: list[tuple[int, int]],
              masked: bool) -> str | None:
    """Equal keys may run together; None: the job runs alone."""
    if masked:
        return None
    references = ",".join(f"{w}x{h}" for w, h in (condition_size(*size) for size in image_sizes))
    weights, family, options = plan.load_key
    return (f"{weights}|{family}|{options}|steps={plan.steps}|guidance={plan.guidance}|{width}x{height}|n={n}"
            f"|refs={references}")
