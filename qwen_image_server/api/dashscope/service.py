"""Translation between the hosted API's request/response shapes and the engine's ``Job``.

Checks run cheapest first (model, message structure, parameters) so a bad request is refused before
any image is downloaded or decoded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Protocol

from PIL.Image import Image

from qwen_image_server.api.dashscope.protocol import (
    Choice,
    GenerationOutput,
    GenerationRequest,
    GenerationResponse,
    Input,
    ResultMessage,
    Usage,
)
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec
from qwen_image_server.errors import InvalidParameter, InvalidURL
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import (
    ImageLimits,
    add_watermark,
    decode_image,
    encode_png,
    parse_data_uri,
)
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.tasks.models import Job, JobResult

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
NEGATIVE_PROMPT_LIMIT = 500


class JobRunner(Protocol):
    async def run(self, job: Job) -> JobResult: ...


def parse_messages(payload: Input) -> tuple[str, list[str]]:
    """The one text and the image references of the single user message (spec §1.1)."""
    if not payload.messages:
        raise InvalidParameter("No messages found in input")
    if len(payload.messages) != 1:
        raise InvalidParameter("messages length only supports 1")
    message = payload.messages[0]
    if message.role != "user":
        raise InvalidParameter("The message role must be 'user'.")
    if isinstance(message.content, str):
        raise InvalidParameter("Message content must be a list of {\"image\": ...} and {\"text\": ...} items.")
    texts, images = [], []
    for item in message.content:
        if (item.text is None) == (item.image is None):
            raise InvalidParameter("Each content item must hold exactly one of 'image' or 'text'.")
        if item.text is not None:
            texts.append(item.text)
        elif item.image is not None:
            images.append(item.image)
    if len(texts) != 1 or not texts[0].strip():
        raise InvalidParameter(f"lack of image or text: content must hold exactly one non-empty text item, "
                               f"got {len(texts)} text item(s).")
    return texts[0], images


def check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"Parameter seed must be in [0, {MAX_SEED}].")
    return seed


class GenerationService:
    def __init__(self, registry: ModelRegistry, runner: JobRunner, fetcher: ImageFetcher,
                 limits: ImageLimits, results: ResultStore) -> None:
        self.registry = registry
        self.runner = runner
        self.fetcher = fetcher
        self.limits = limits
        self.results = results

    async def generate(self, request: GenerationRequest, request_id: str) -> GenerationResponse:
        started = time.perf_counter()
        spec = self.registry.get(request.model)
        job = await self.build_job(spec, request)
        prepared = time.perf_counter()
        result = await self.runner.run(job)
        urls = await asyncio.to_thread(self.store_images, uuid.UUID(request_id).hex, result.images, job.watermark)
        log.info("request %s: %s, %d image(s) %dx%d; inputs %.3f s, engine %.3f s, total %.3f s", request_id,
                 spec.name, len(urls), job.width, job.height, prepared - started, result.seconds,
                 time.perf_counter() - started)
        return GenerationResponse(
            output=GenerationOutput(choices=[Choice(message=ResultMessage(
                content=[{"image": url} for url in urls]))]),
            usage=Usage(width=job.width, height=job.height, image_count=len(urls)),
            request_id=request_id,
        )

    async def build_job(self, spec: ModelSpec, request: GenerationRequest) -> Job:
        prompt, sources = parse_messages(request.input)
        parameters = request.parameters
        spec.rules.check_image_count(len(sources))
        n = 1 if parameters.n is None else parameters.n
        spec.rules.check_n(n)
        seed = check_seed(parameters.seed)
        images = await self.load_images(sources)
        width, height = spec.rules.output_size(
            parameters.size, images[-1].size if images else None, spec.family.output_multiple)
        return Job(
            model=spec.name, prompt=prompt, width=width, height=height, seed=seed, n=n, images=images,
            negative_prompt=(parameters.negative_prompt or "")[:NEGATIVE_PROMPT_LIMIT] or None,
            prompt_extend=parameters.prompt_extend is not False,
            watermark=bool(parameters.watermark),
        )

    async def load_images(self, sources: list[str]) -> list[Image]:
        return list(await asyncio.gather(*(self.load_image(source) for source in sources)))

    async def load_image(self, source: str) -> Image:
        if source.startswith("data:"):
            data = parse_data_uri(source, self.limits)
        elif source.startswith(("http://", "https://")):
            data = await self.fetcher.fetch(source)
        elif source.startswith("oss://"):
            raise InvalidParameter("The provided URL does not appear to be valid: oss:// temporary URLs "
                                   "(the SDK's local-file upload) are not supported by this server yet.")
        else:
            raise InvalidURL("Image items must be http(s) URLs or data: URIs.")
        return await asyncio.to_thread(decode_image, data, self.limits)

    def store_images(self, key: str, images: list[Image], watermark: bool) -> list[str]:
        return [
            self.results.save(key, index, encode_png(add_watermark(image) if watermark else image))
            for index, image in enumerate(images)
        ]
