"""Qwen-Image-Edit and Edit-2509/2511 (EditPlus): each prompt meets its own job's condition images in the
Qwen2.5-VL text encoder, and the condition images' VAE latents follow the noise in the transformer's input.

The pipelines' ``encode_prompt`` pairs one set of images with every prompt of a call (which is why EditPlus
refuses batches), so the rows are assembled here from the pipelines' own templates, the images of each row
in order, and encoded in one padded call.
"""

from __future__ import annotations

import torch
from PIL.Image import Image

from qwen_image_server.engine.batching import condition_size
from qwen_image_server.engine.contract import EngineJob
from qwen_image_server.engine.steps.base import Conditions, FamilySteps, Texts, texts_of

VISION_AREA = 384 * 384  # EditPlus's size for what the text encoder sees of each image
PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"


class EditSteps(FamilySteps):
    """Qwen-Image-Edit: one image, resized to about 1 MP for both the text encoder and the VAE."""

    def conditions(self, job: EngineJob, width: int, height: int) -> Conditions:
        processor = self.pipeline.image_processor
        image = job.images[0]
        condition_width, condition_height = condition_size(*image.size)
        resized = processor.resize(image, condition_height, condition_width)
        vae_input = processor.preprocess(resized, condition_height, condition_width).unsqueeze(2)
        return self._conditions(width, height, [vae_input], [(condition_width, condition_height)], [resized])

    def text(self, prompt: str, images: list[Image]) -> str:
        return str(self.pipeline.prompt_template_encode.format(prompt))

    def _conditions(self, width: int, height: int, vae_inputs: list[torch.Tensor], vae_sizes: list[tuple[int, int]],
                    seen: list[Image]) -> Conditions:
        scale = self.pipeline.vae_scale_factor * 2
        shapes = [(1, height // scale, width // scale),
                  *[(1, vae_height // scale, vae_width // scale) for vae_width, vae_height in vae_sizes]]
        return Conditions(vae_inputs, shapes, seen)

    def encode(self, prompts: list[str], negatives: list[str] | None,
               condition_images: list[list[Image]]) -> tuple[Texts, Texts | None]:
        rows = prompts + (negatives or [])
        images = condition_images * (2 if negatives is not None else 1)
        texts = self.encode_rows([self.text(prompt, seen) for prompt, seen in zip(rows, images, strict=True)],
                                 [image for seen in images for image in seen])
        jobs = torch.arange(len(prompts), device=texts.embeds.device)
        if negatives is None:
            return texts, None
        return texts.rows(jobs), texts.rows(jobs + len(prompts))

    def encode_rows(self, texts: list[str], images: list[Image]) -> Texts:
        """One padded text-encoder call; each row's hidden states without the template's system prefix."""
        pipeline = self.pipeline
        inputs = pipeline.processor(text=texts, images=images or None, padding=True,
                                    return_tensors="pt").to(pipeline._execution_device)
        outputs = pipeline.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                        pixel_values=inputs.get("pixel_values"),
                                        image_grid_thw=inputs.get("image_grid_thw"), output_hidden_states=True)
        rows = pipeline._extract_masked_hidden(outputs.hidden_states[-1], inputs["attention_mask"])
        start = pipeline.prompt_template_encode_start_idx
        return texts_of([row[start:] for row in rows], pipeline.text_encoder.dtype)


class EditPlusSteps(EditSteps):
    """Edit-2509/2511: 1-3 images, each seen by the text encoder at 384x384-ish and by the VAE at ~1 MP."""

    def conditions(self, job: EngineJob, width: int, height: int) -> Conditions:
        processor = self.pipeline.image_processor
        seen, vae_inputs, vae_sizes = [], [], []
        for image in job.images:
            vision_width, vision_height = condition_size(*image.size, VISION_AREA)
            vae_width, vae_height = condition_size(*image.size)
            seen.append(processor.resize(image, vision_height, vision_width))
            vae_inputs.append(processor.preprocess(image, vae_height, vae_width).unsqueeze(2))
            vae_sizes.append((vae_width, vae_height))
        return self._conditions(width, height, vae_inputs, vae_sizes, seen)

    def text(self, prompt: str, images: list[Image]) -> str:
        pictures = "".join(PICTURE.format(index + 1) for index in range(len(images)))
        return str(self.pipeline.prompt_template_encode.format(pictures + prompt))
