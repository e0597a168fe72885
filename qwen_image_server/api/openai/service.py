"""OpenAI's images requests become a ``JobRequest`` for the shared ``GenerationService``; its finished task
becomes an ``ImagesResponse``.

Model names are ours (the served DashScope names), so an unknown or missing model is answered with the list
of names served here. Prompt extension is off unless asked for (``prompt_extend``), since OpenAI clients expect
their prompt to be used as written.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Any

from qwen_image_server.api.openai.protocol import EditsForm, ImageData, ImageOptions, ImagesResponse
from qwen_image_server.api.submissions import Disconnected, GenerationService, ImageSource, JobRequest
from qwen_image_server.engine.registry import ModelSpec
from qwen_image_server.errors import InvalidParameter, ModelNotFound
from qwen_image_server.tasks.models import TaskMode, TaskRecord

NO_TOKENS = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
             "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}}  # we bill nothing by tokens


class OpenAIImagesService:
    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    async def generate(self, request: ImageOptions, key_id: str, request_id: str,
                       disconnected: Disconnected) -> ImagesResponse:
        """``/v1/images/generations``: text to image."""
        return await self._run(request, [], None, key_id, request_id, disconnected)

    @staticmethod
    async def edit_inputs(form: EditsForm) -> tuple[list[ImageSource], bytes | None]:
        """The uploaded images and mask, read while the request's files are open."""
        uploads = [*form.image, *form.image_array]
        if not uploads:
            raise InvalidParameter("Upload at least one image to edit, as 'image' (or 'image[]' for several).",
                                   param="image")
        images: list[ImageSource] = [await upload.read() for upload in uploads]
        return images, await form.mask.read() if form.mask is not None else None

    async def edit(self, form: EditsForm, images: list[ImageSource], mask: bytes | None, key_id: str,
                   request_id: str, disconnected: Disconnected) -> ImagesResponse:
        """``/v1/images/edits``: the uploaded images (the mask, if any, applies to the first) and a prompt."""
        return await self._run(form, images, mask, key_id, request_id, disconnected)

    @staticmethod
    async def completed_events(answer: Awaitable[ImagesResponse]) -> list[dict[str, Any]]:
        """A streamed request's ``*.completed`` events, one per image (OpenAI streams carry the image itself)."""
        response = await answer
        return [{"b64_json": item.b64_json, "created_at": response.created, "size": response.size,
                 "quality": "auto", "background": "opaque", "output_format": response.output_format,
                 "usage": NO_TOKENS} for item in response.data]

    async def _run(self, request: ImageOptions, images: list[ImageSource], mask: bytes | None, key_id: str,
                   request_id: str, disconnected: Disconnected) -> ImagesResponse:
        """Streamed requests (``stream``) always carry their images as base64, as OpenAI's do."""
        spec = await self.generation.admit(self._model_name(request.model), key_id, TaskMode.SYNC)
        prepared = await self.generation.prepare(spec, job_request(spec, request, images, mask), key_id)
        record = await self.generation.run_sync(prepared, key_id, request_id, disconnected)
        return ImagesResponse(
            created=int(record.finished_at or time.time()),
            data=await self._images(record, "b64_json" if request.stream else request.response_format or "url"),
            output_format=prepared.job.output_format,
            size=f"{prepared.job.width}x{prepared.job.height}",
        )

    def _model_name(self, model: str | None) -> str:
        served = ", ".join(self.generation.registry.names())
        if not model:
            raise InvalidParameter(f"Parameter model is required; models served here: {served}.", param="model")
        if model not in self.generation.registry.names():
            raise ModelNotFound(f"The model {model!r} does not exist here; models served here: {served}.",
                                param="model")
        return model

    async def _images(self, record: TaskRecord, response_format: str) -> list[ImageData]:
        if response_format == "url":
            return [ImageData(url=url, revised_prompt=record.actual_prompt) for url in self.generation.urls(record)]
        contents = await asyncio.gather(*(asyncio.to_thread(self.generation.results.read, name)
                                          for name in record.outputs))
        return [ImageData(b64_json=base64.b64encode(data).decode(), revised_prompt=record.actual_prompt)
                for data in contents]


def job_request(spec: ModelSpec, request: ImageOptions, images: list[ImageSource], mask: bytes | None) -> JobRequest:
    output_format = request.output_format or "png"
    if request.output_compression is not None and output_format == "png":
        raise InvalidParameter("output_compression applies to the jpeg and webp output formats only.",
                               param="output_compression")
    if not request.prompt.strip():
        raise InvalidParameter("Parameter prompt must not be blank.", param="prompt")
    size = None if request.size in (None, "auto") else spec.rules.requested_size(request.size, "x")
    return JobRequest(
        prompt=request.prompt, images=images, mask=mask, n=request.n, size=size, size_separator="x",
        seed=request.seed,
        negative_prompt=request.negative_prompt, prompt_extend=bool(request.prompt_extend),
        output_format=output_format, output_quality=request.output_compression,
    )
