"""The numbered denoising steps every family shares, over a loaded diffusers pipeline's components.

Like diffusers' pipelines, a run is: 1. prepare each job's condition images and starting latents, 2. encode
the prompts with them, 3. the timesteps, 4. denoise, 5. decode. Unlike them, one run holds many jobs, each with its own
prompt, negative prompt, seed and condition images, and under true CFG the conditional and unconditional
passes go through the transformer as one batch (texts padded to one length, with the mask). diffusers' own
helpers do the parts that are theirs (shift, timesteps, latent preparation and packing, the VAE's scaling);
the models are diffusers' models, unchanged.

A family's module supplies what differs: how prompts meet condition images in the text encoder, how a job's
condition images become latents and positions, and how the transformer is called and its guided prediction
combined.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL.Image import Image

from qwen_image_server.engine.contract import EngineBatch, EngineJob, Progress

BLANK_NEGATIVE_PROMPT = " "  # what the Qwen-Image model cards pass when there is no negative prompt


@dataclass
class Texts:
    """Encoded prompts, one row each: embeddings right-padded to one length, and their mask (None: no padding).
    ``extra`` is what a family's transformer needs besides (Qwen-Image-2.1: where the image tokens are)."""

    embeds: torch.Tensor
    mask: torch.Tensor | None
    extra: torch.Tensor | None = None

    def rows(self, index: torch.Tensor) -> Texts:
        """These texts repeated or reordered (row ``i`` of the result is row ``index[i]``), without the padding
        none of the chosen rows needs: a set of rows as long as each other carries no mask at all."""
        mask = None if self.mask is None else self.mask[index]
        length = self.embeds.shape[1] if mask is None else int(mask.sum(dim=1).max())
        if mask is not None:
            mask = None if bool(mask[:, :length].all()) else mask[:, :length]
        return Texts(self.embeds[index, :length], mask, None if self.extra is None else self.extra[index, :length])


@dataclass
class Conditions:
    """One job's condition images, prepared as its family's pipeline prepares them (nothing encoded yet)."""

    vae_inputs: list[torch.Tensor]  # each image preprocessed for the VAE, (1, 3, 1, height, width)
    image_shapes: list[tuple[int, int, int]]  # the transformer's positions, the target's included
    seen: list[Image]  # what the text encoder sees of each image


def padded_together(first: Texts, second: Texts) -> Texts:
    """Both sets of rows in one batch: embeddings right-padded to the longer length, masks to match."""
    length = max(first.embeds.shape[1], second.embeds.shape[1])
    embeds = torch.cat([_pad(first.embeds, length), _pad(second.embeds, length)])
    if first.mask is None and second.mask is None and first.embeds.shape[1] == second.embeds.shape[1]:
        mask = None
    else:
        mask = torch.cat([_pad(_mask_of(texts), length) for texts in (first, second)])
    extra = None
    if first.extra is not None and second.extra is not None:
        extra = torch.cat([_pad(first.extra, length), _pad(second.extra, length)])
    return Texts(embeds, mask, extra)


def _mask_of(texts: Texts) -> torch.Tensor:
    if texts.mask is not None:
        return texts.mask
    return torch.ones(texts.embeds.shape[:2], dtype=torch.long, device=texts.embeds.device)


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], missing, *tensor.shape[2:])], dim=1)


class FamilySteps:
    """The steps of one family. Subclasses supply ``encode``, ``prepare`` and, where it differs, ``predict``."""

    rescales_guidance = True  # Qwen-Image 1.x scales the guided prediction back to the conditional's norm
    channels_per_token = 4  # 1.x packs 2x2 latent patches into a token; 2.1 reads latents unpatched (1)

    def __init__(self, pipeline: Any, cfg_batch: bool) -> None:
        self.pipeline = pipeline
        self.cfg_batch = cfg_batch

    # --- what families supply ---------------------------------------------------------------------------------
    def conditions(self, job: EngineJob, width: int, height: int) -> Conditions:
        """Step 1: one job's condition images, resized for the VAE and the text encoder, and the positions."""
        raise NotImplementedError

    def encode(self, prompts: list[str], negatives: list[str] | None,
               condition_images: list[list[Image]]) -> tuple[Texts, Texts | None]:
        """Step 2: each job's prompt (and negative prompt) with its condition images: one row per job each."""
        raise NotImplementedError

    def transformer_input(self, latents: torch.Tensor, references: torch.Tensor | None) -> torch.Tensor:
        return latents if references is None else torch.cat([latents, references], dim=1)

    def target_of(self, prediction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return prediction[:, :latents.size(1)]

    def call_transformer(self, hidden: torch.Tensor, texts: Texts, image_shapes: list[Any], timestep: torch.Tensor,
                         context: str, state: dict[str, Any]) -> torch.Tensor:
        transformer = self.pipeline.transformer
        with transformer.cache_context(context):
            return transformer(hidden_states=hidden, timestep=timestep, guidance=None,
                               encoder_hidden_states=texts.embeds, encoder_hidden_states_mask=texts.mask,
                               img_shapes=image_shapes, attention_kwargs={}, return_dict=False)[0]

    # --- the numbered steps -------------------------------------------------------------------------------------
    def run(self, batch: EngineBatch, prompts: list[str], output_type: str = "pil") -> Iterator[Progress | list[Any]]:
        """``prompts``: the jobs' prompts as they are to be used (after any extension). The outputs are PIL
        images, or with ``output_type="np"`` the float arrays diffusers would turn into them."""
        pipeline, plan = self.pipeline, batch.plan
        device = pipeline._execution_device
        guided = plan.guidance > 1

        # 1. Condition images and starting latents: every job's images through the VAE together, position by
        # position; one generator per image to make (seed + i).
        dtype = pipeline.text_encoder.dtype
        job_conditions = [self.conditions(job, batch.width, batch.height) for job in batch.jobs]
        latents = torch.cat([self.noise(job, batch.width, batch.height, generators_for(job, device), dtype)
                             for job in batch.jobs])
        per_job = self.reference_latents([conditions.vae_inputs for conditions in job_conditions], dtype)
        references = None if per_job is None else torch.cat(
            [job_references.repeat(job.n, 1, 1) for job_references, job in zip(per_job, batch.jobs, strict=True)])
        image_shapes = [job_conditions[0].image_shapes] * latents.shape[0]

        # 2. Encode the prompts, and under CFG the negative prompts, with each job's condition images; then one
        # row per image to make.
        negatives = [job.negative_prompt or BLANK_NEGATIVE_PROMPT for job in batch.jobs] if guided else None
        job_texts, job_negatives = self.encode(prompts, negatives, [conditions.seen for conditions in job_conditions])
        rows = torch.tensor([index for index, job in enumerate(batch.jobs) for _ in range(job.n)], device=device)
        conditional = job_texts.rows(rows)
        unconditional = job_negatives.rows(rows) if job_negatives is not None else None

        # 3. Timesteps, as the pipelines set them.
        scheduler = pipeline.scheduler
        sigmas = self.sigmas(plan.steps)
        mu = calculate_shift(latents.shape[1], scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                             scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, plan.steps, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

        # 4. Denoise. Under CFG the two passes share one transformer call where ``joins`` allows it: their texts
        # are padded to one length once, here.
        state: dict[str, Any] = {}
        joined = (padded_together(conditional, unconditional)
                  if unconditional is not None and self.joins(conditional, unconditional) else None)
        for index, t in enumerate(timesteps):
            state["step"] = index
            prediction = self.predict(latents, references, conditional, unconditional, joined, image_shapes,
                                      t, plan.guidance, state)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
            yield Progress(index + 1, len(timesteps))

        # 5. Decode, all images at once; then back to jobs.
        images = self.decode(latents, batch.width, batch.height, output_type)
        outputs, start = [], 0
        for job in batch.jobs:
            outputs.append(images[start:start + job.n])
            start += job.n
        yield outputs

    @property
    def channels(self) -> int:
        return int(self.pipeline.transformer.config.in_channels) // self.channels_per_token

    def noise(self, job: EngineJob, width: int, height: int, generators: list[torch.Generator],
              dtype: torch.dtype) -> torch.Tensor:
        """The job's starting latents, packed, one row per image: what the pipelines' ``prepare_latents`` draws."""
        pipeline = self.pipeline
        grid_height = 2 * (height // (pipeline.vae_scale_factor * 2))
        grid_width = 2 * (width // (pipeline.vae_scale_factor * 2))
        shape = (job.n, 1, self.channels, grid_height, grid_width)
        drawn = randn_tensor(shape, generator=generators, device=pipeline._execution_device, dtype=dtype)
        return pipeline._pack_latents(drawn, job.n, self.channels, grid_height, grid_width)

    def reference_latents(self, vae_inputs: list[list[torch.Tensor]], dtype: torch.dtype) -> list[torch.Tensor] | None:
        """Each job's condition images as packed latents, one row per job. The images at each position go through
        the VAE in one call (the batch key makes their sizes equal); the pipelines encode them one by one."""
        if not vae_inputs[0]:
            return None
        pipeline = self.pipeline
        packed: list[list[torch.Tensor]] = [[] for _ in vae_inputs]
        for position in range(len(vae_inputs[0])):
            stacked = torch.cat([inputs[position] for inputs in vae_inputs])
            encoded = pipeline._encode_vae_image(stacked.to(pipeline._execution_device, dtype), None)
            grid_height, grid_width = encoded.shape[3:]
            for job_index, row in enumerate(encoded):
                packed[job_index].append(pipeline._pack_latents(row.unsqueeze(0), 1, self.channels, grid_height,
                                                                grid_width))
        return [torch.cat(parts, dim=1) for parts in packed]

    def sigmas(self, steps: int) -> Any:
        return np.linspace(1.0, 1 / steps, steps)

    def joins(self, conditional: Texts, unconditional: Texts) -> bool:
        """Whether the two passes of CFG may share one call (families whose positions follow the text's padded
        length allow it only for texts as long)."""
        return self.cfg_batch

    def predict(self, latents: torch.Tensor, references: torch.Tensor | None, conditional: Texts,
                unconditional: Texts | None, joined: Texts | None, image_shapes: list[Any], t: torch.Tensor,
                guidance: float, state: dict[str, Any]) -> torch.Tensor:
        """One step's noise prediction; under CFG both passes, in one call when ``joined`` holds both texts."""
        hidden = self.transformer_input(latents, references)
        rows = latents.shape[0]
        timestep = t.expand(rows).to(latents.dtype) / 1000
        if unconditional is None:
            return self.target_of(self.call_transformer(hidden, conditional, image_shapes, timestep, "cond", state),
                                  latents)
        if joined is not None:
            both = self.call_transformer(torch.cat([hidden, hidden]), joined, image_shapes * 2,
                                         torch.cat([timestep, timestep]), "cfg", state)
            cond, uncond = self.target_of(both, latents).chunk(2)
        else:
            cond = self.target_of(self.call_transformer(hidden, conditional, image_shapes, timestep, "cond", state),
                                  latents)
            uncond = self.target_of(self.call_transformer(hidden, unconditional, image_shapes, timestep, "uncond",
                                                          state), latents)
        return self.combine(cond, uncond, guidance)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
        guided = uncond + guidance * (cond - uncond)
        if not self.rescales_guidance:
            return guided
        return guided * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(guided, dim=-1, keepdim=True))

    def decode(self, latents: torch.Tensor, width: int, height: int, output_type: str = "pil") -> list[Any]:
        pipeline = self.pipeline
        vae = pipeline.vae
        latents = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        decoded = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
        return list(pipeline.image_processor.postprocess(decoded, output_type=output_type))


def generators_for(job: EngineJob, device: torch.device) -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(job.seed + index) for index in range(job.n)]


def texts_of(rows: list[torch.Tensor], dtype: torch.dtype, extras: list[torch.Tensor] | None = None) -> Texts:
    """Variable-length rows (one per prompt) as ``Texts``: right-padded, with a mask unless all are as long."""
    length = max(row.shape[0] for row in rows)
    embeds = torch.stack([_pad(row.unsqueeze(0), length)[0] for row in rows]).to(dtype)
    mask = None
    if any(row.shape[0] != length for row in rows):
        mask = torch.stack([_pad(torch.ones(1, row.shape[0], dtype=torch.long, device=row.device), length)[0]
                            for row in rows])
    extra = None if extras is None else torch.stack([_pad(row.unsqueeze(0), length)[0] for row in extras])
    return Texts(embeds, mask, extra)
