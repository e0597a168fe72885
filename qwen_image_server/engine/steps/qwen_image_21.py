"""Qwen-Image-2.1: a single-stream, block-causal transformer over one interleaved text/image sequence.

Condition images are vision context in the Qwen3-VL prompt and VAE latents placed before the target's. The
transformer lays out positions from the first row of a batch (which tokens are image tokens, and where the
target starts), so rows batch exactly only when their prompts encode to the same length: jobs are grouped by
that length and each group denoises on its own, one after another in the same run; and the two passes of
true CFG share one call only when the prompt and the negative prompt are as long. Text and condition tokens
do not change between steps, so their keys and values are computed once (the first step fills a cache).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from PIL.Image import Image

from qwen_image_server.engine.batching import condition_size
from qwen_image_server.engine.contract import EngineBatch, EngineJob, Progress
from qwen_image_server.engine.steps.base import BLANK_NEGATIVE_PROMPT, Conditions, FamilySteps, Texts, texts_of

OUTPUT_RESOLUTION = 1024  # the pipeline's default: condition images at about 1 MP


class QwenImage21Steps(FamilySteps):
    rescales_guidance = False
    channels_per_token = 1

    def run(self, batch: EngineBatch, prompts: list[str], output_type: str = "pil") -> Iterator[Progress | list[Any]]:
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, job in enumerate(batch.jobs):
            groups.setdefault(self.lengths(job, prompts[index], batch.plan.guidance > 1), []).append(index)
        outputs: list[Any] = [[] for _ in batch.jobs]
        done = 0
        for members in groups.values():
            group = EngineBatch(batch.plan, batch.width, batch.height, [batch.jobs[index] for index in members])
            for event in super().run(group, [prompts[index] for index in members], output_type):
                if isinstance(event, Progress):
                    yield Progress(done + event.step, event.total * len(groups))
                else:
                    for index, images in zip(members, event, strict=True):
                        outputs[index] = images
            done += batch.plan.steps
        yield outputs

    def lengths(self, job: EngineJob, prompt: str, guided: bool) -> tuple[int, ...]:
        """Token counts of the job's prompt (and negative prompt) as the encoder sees them: rows batch only
        when these are equal."""
        pipeline = self.pipeline
        template = pipeline.prompt_template_ti2i if job.images else pipeline.prompt_template_t2i
        texts = [prompt] + ([job.negative_prompt or BLANK_NEGATIVE_PROMPT] if guided else [])
        return len(job.images), *(len(pipeline.processor.tokenizer(template.format(text))["input_ids"])
                                  for text in texts)

    def sigmas(self, steps: int) -> Any:
        configured = getattr(self.pipeline.config, "sample_sigmas", None)
        return configured if configured is not None else super().sigmas(steps)

    def conditions(self, job: EngineJob, width: int, height: int) -> Conditions:
        pipeline = self.pipeline
        processor = pipeline.image_processor
        seen, vae_inputs, sizes = [], [], []
        for image in job.images:
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            input_width, input_height = condition_size(*rgba.size, OUTPUT_RESOLUTION * OUTPUT_RESOLUTION)
            sizes.append((input_width, input_height))
            seen.append(processor.resize(rgba, width=input_width, height=input_height))
            vae_inputs.append(processor.preprocess(rgba, width=input_width, height=input_height).unsqueeze(2))
        scale = pipeline.vae_scale_factor
        shapes = [*[(1, input_height // scale, input_width // scale) for input_width, input_height in sizes],
                  (1, height // scale, width // scale)]
        return Conditions(vae_inputs, shapes, seen)

    def encode(self, prompts: list[str], negatives: list[str] | None,
               condition_images: list[list[Image]]) -> tuple[Texts, Texts | None]:
        """The pipeline's own encoding: text-to-image jobs in one call; a job with images, its prompt and
        negative prompt in one call (the pipeline pairs one set of images with every prompt of a call)."""
        rows = [[prompt] + ([negatives[index]] if negatives is not None else [])
                for index, prompt in enumerate(prompts)]
        if not any(condition_images):
            encoded = [self._encode([text for texts in rows for text in texts], None)]
        else:
            encoded = [self._encode(texts, images) for texts, images in zip(rows, condition_images, strict=True)]
        embeds = [row for embeds, _ in encoded for row in embeds]
        extras = [row for _, extras in encoded for row in extras]
        everything = texts_of(embeds, self.pipeline.text_encoder.dtype, extras)
        width = 2 if negatives is not None else 1
        jobs = torch.arange(len(prompts), device=everything.embeds.device) * width
        if negatives is None:
            return everything.rows(jobs), None
        return everything.rows(jobs), everything.rows(jobs + 1)

    def _encode(self, texts: list[str], images: list[Image] | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pipeline = self.pipeline
        embeds, mask, image_pad_mask = pipeline._get_qwen_prompt_embeds(texts, images, pipeline._execution_device)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        lengths = mask.sum(dim=1).tolist()
        return ([row[:length] for row, length in zip(embeds, lengths, strict=True)],
                [row[:length] for row, length in zip(image_pad_mask, lengths, strict=True)])

    def transformer_input(self, latents: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        return latents if references is None else torch.cat([references, latents], dim=1)

    def target_of(self, prediction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return prediction[:, -latents.size(1):]

    def joins(self, conditional: Texts, unconditional: Texts) -> bool:
        return self.cfg_batch and conditional.embeds.shape[1] == unconditional.embeds.shape[1]

    def call_transformer(self, hidden: torch.Tensor, texts: Texts, image_shapes: list[Any], timestep: torch.Tensor,
                         context: str, state: dict[str, Any]) -> torch.Tensor:
        transformer = self.pipeline.transformer
        image_tokens = texts.extra if texts.extra is not None else texts.embeds.new_zeros(texts.embeds.shape[:2],
                                                                                         dtype=torch.bool)
        # One slot per 2x2 group of target latents, after the text, as the pipeline appends them.
        target_slots = math.prod(image_shapes[0][-1]) // 4
        img_mask = torch.cat([image_tokens, image_tokens.new_ones(image_tokens.shape[0], target_slots)], dim=1)
        cached = transformer.config.causal_condition
        cache = state.setdefault(f"kv-{context}", transformer_cache(transformer)) if cached else None
        mode = ("extract" if state["step"] == 0 else "cached") if cached else None
        with transformer.cache_context(context):
            return transformer(hidden_states=hidden, timestep=timestep, encoder_hidden_states=texts.embeds,
                               encoder_hidden_states_mask=texts.mask, img_shapes=image_shapes, img_mask=img_mask,
                               attention_kwargs={}, kv_cache=cache, kv_cache_mode=mode, return_dict=False)[0]


def transformer_cache(transformer: Any) -> Any:
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

    return QwenImage21KVCache(len(transformer.transformer_blocks))


