"""Qwen-Image and -2512 text-to-image: prompts through the Qwen2.5-VL text encoder as text only."""

from __future__ import annotations

import torch
from PIL.Image import Image

from qwen_image_server.engine.contract import EngineJob
from qwen_image_server.engine.steps.base import Conditions, FamilySteps, Texts

MAX_SEQUENCE_LENGTH = 512  # what QwenImagePipeline's __call__ cuts prompt embeddings to


class QwenImageSteps(FamilySteps):
    def conditions(self, job: EngineJob, width: int, height: int) -> Conditions:
        scale = self.pipeline.vae_scale_factor * 2
        return Conditions([], [(1, height // scale, width // scale)], [])

    def encode(self, prompts: list[str], negatives: list[str] | None,
               condition_images: list[list[Image]]) -> tuple[Texts, Texts | None]:
        """Prompts and negative prompts in one padded call: text only, so nothing ties a row to a job."""
        texts = prompts + (negatives or [])
        embeds, mask = self.pipeline.encode_prompt(prompt=texts, device=self.pipeline._execution_device,
                                                   num_images_per_prompt=1, max_sequence_length=MAX_SEQUENCE_LENGTH)
        everything = Texts(embeds, mask)
        jobs = torch.arange(len(prompts), device=embeds.device)
        if negatives is None:
            return everything.rows(jobs), None
        return everything.rows(jobs), everything.rows(jobs + len(prompts))
