"""Submissions: the hosted API's request shapes become a ``Job``, stored as a task; sync requests then wait.

Checks run cheapest first (model, rate limits, message structure, parameters, queue room) so a bad or
refused request costs nothing before any image is downloaded or decoded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from qwen_image_server.api.dashscope.protocol import (
    Choice,
    GenerationOutput,
    GenerationRequest,
    GenerationResponse,
    Input,
    Parameters,
    ResultMessage,
    SynthesisRequest,
    TaskCreatedOutput,
    TaskCreatedResponse,
    Usage,
)
from qwen_image_server.api.limits import RateLimiter
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec
from qwen_image_server.errors import InvalidParameter, InvalidURL, ModelUnavailable, ServiceError
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import ImageLimits, decode_image, parse_data_uri
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.media.uploads import OSS_SCHEME, UploadStore
from qwen_image_server.tasks.models import Job, NewTask, TaskMode, TaskRecord, TaskState
from qwen_image_server.tasks.queue import TaskQueue

log = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1
NEGATIVE_PROMPT_LIMIT = 500

Disconnected = Callable[[], Awaitable[bool]]


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


@dataclass(frozen=True)
class InputScope:
    """Whose ``oss://`` uploads a request may read: the caller's, for its model, and only when it asked
    with ``X-DashScope-OssResourceResolve: enable`` (the SDK adds it whenever it uploaded a file)."""

    key_id: str
    model: str
    resolve_oss: bool


def wants_oss_resolve(header: str | None) -> bool:
    return (header or "").strip().lower() == "enable"


def check_seed(seed: int | None) -> int:
    if seed is None:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter(f"Parameter seed must be in [0, {MAX_SEED}].")
    return seed


class GenerationService:
    def __init__(self, registry: ModelRegistry, queue: TaskQueue, fetcher: ImageFetcher, limits: ImageLimits,
                 results: ResultStore, uploads: UploadStore, rate_limiter: RateLimiter,
                 engines_ready: Callable[[], bool]) -> None:
        self.registry = registry
        self.queue = queue
        self.fetcher = fetcher
        self.limits = limits
        self.results = results
        self.uploads = uploads
        self.rate_limiter = rate_limiter
        self.engines_ready = engines_ready

    async def generate(self, request: GenerationRequest, key_id: str, request_id: str, resolve_oss: bool,
                       disconnected: Disconnected) -> GenerationResponse:
        """The sync endpoint: a task plus a wait. The task id is the request id, so a client that lost the
        connection while its task ran can still fetch the result from ``/api/v1/tasks/{request_id}``."""
        started = time.perf_counter()
        spec, job, inputs = await self._generation_job(request, key_id, resolve_oss, TaskMode.SYNC)
        await self._submit(spec, job, inputs, request_id, key_id, request_id, TaskMode.SYNC)
        record = await self.queue.wait(request_id, key_id, disconnected)
        log.info("request %s: %s, %d image(s) %dx%d, %s in %.3f s", request_id, spec.name, len(record.outputs),
                 job.width, job.height, record.state, time.perf_counter() - started)
        if record.state is TaskState.FAILED:
            raise task_error(record)
        if record.state is TaskState.CANCELED:
            raise ServiceError("The request was canceled: the client disconnected before it started.")
        urls = [self.results.url(name, record.finished_at or time.time()) for name in record.outputs]
        return GenerationResponse(
            output=GenerationOutput(choices=[Choice(message=ResultMessage(
                content=[{"image": url} for url in urls]))]),
            usage=Usage(width=job.width, height=job.height, image_count=len(urls)),
            request_id=request_id,
        )

    async def submit_generation(self, request: GenerationRequest, key_id: str, request_id: str,
                                resolve_oss: bool) -> TaskCreatedResponse:
        """Our extension: the multimodal endpoint with ``X-DashScope-Async: enable`` runs edits as tasks."""
        spec, job, inputs = await self._generation_job(request, key_id, resolve_oss, TaskMode.ASYNC)
        return await self._submit_async(spec, job, inputs, key_id, request_id)

    async def submit_synthesis(self, request: SynthesisRequest, key_id: str, request_id: str) -> TaskCreatedResponse:
        """text2image/image-synthesis (spec §2.1): always a task."""
        spec = await self._admit(request.model, key_id, TaskMode.ASYNC)
        if spec.rules.min_images > 0:
            raise InvalidParameter(f"Model {spec.name} edits images; use the multimodal-generation endpoint.")
        prompt = request.input.prompt
        if prompt is None or not prompt.strip():
            raise InvalidParameter("Required parameter input.prompt is missing or empty.")
        negative_prompt = request.input.negative_prompt or request.parameters.negative_prompt
        job, inputs = await self._build_job(spec, prompt, [], InputScope(key_id, spec.name, False),
                                            request.parameters, negative_prompt)
        return await self._submit_async(spec, job, inputs, key_id, request_id)

    async def _admit(self, model: str, key_id: str, mode: TaskMode) -> ModelSpec:
        spec = self.registry.get(model)
        if not self.engines_ready():
            raise ModelUnavailable("Models are still loading, please try again later.")
        self.rate_limiter.hit(key_id, spec.name)
        if mode is TaskMode.ASYNC:
            active = await asyncio.to_thread(self.queue.store.count_active, key_id, spec.name, mode)
            self.rate_limiter.check_concurrency(spec.name, active)
        return spec

    async def _generation_job(self, request: GenerationRequest, key_id: str, resolve_oss: bool,
                              mode: TaskMode) -> tuple[ModelSpec, Job, list[bytes]]:
        spec = await self._admit(request.model, key_id, mode)
        prompt, sources = parse_messages(request.input)
        job, inputs = await self._build_job(spec, prompt, sources, InputScope(key_id, spec.name, resolve_oss),
                                            request.parameters, request.parameters.negative_prompt)
        return spec, job, inputs

    async def _submit_async(self, spec: ModelSpec, job: Job, inputs: list[bytes], key_id: str,
                            request_id: str) -> TaskCreatedResponse:
        task_id = str(uuid.uuid4())
        await self._submit(spec, job, inputs, task_id, key_id, request_id, TaskMode.ASYNC)
        return TaskCreatedResponse(output=TaskCreatedOutput(task_id=task_id, task_status=TaskState.PENDING),
                                   request_id=request_id)

    async def _submit(self, spec: ModelSpec, job: Job, inputs: list[bytes], task_id: str, key_id: str,
                      request_id: str, mode: TaskMode) -> None:
        await self.queue.submit(NewTask(task_id, key_id, request_id, mode, job, inputs,
                                        job.batch_key(spec.family.batches_prompts)))

    async def _build_job(self, spec: ModelSpec, prompt: str, sources: list[str], scope: InputScope,
                         parameters: Parameters, negative_prompt: str | None) -> tuple[Job, list[bytes]]:
        spec.rules.check_image_count(len(sources))
        n = 1 if parameters.n is None else parameters.n
        spec.rules.check_n(n)
        seed = check_seed(parameters.seed)
        await self.queue.check_capacity()
        inputs = await self.load_inputs(sources, scope)
        width, height = spec.rules.output_size(parameters.size, inputs[-1][1] if inputs else None,
                                               spec.family.output_multiple)
        job = Job(
            model=spec.name, prompt=prompt, width=width, height=height, seed=seed, n=n,
            negative_prompt=(negative_prompt or "")[:NEGATIVE_PROMPT_LIMIT] or None,
            prompt_extend=parameters.prompt_extend is not False,
            watermark=bool(parameters.watermark),
        )
        return job, [data for data, _size in inputs]

    async def load_inputs(self, sources: list[str], scope: InputScope) -> list[tuple[bytes, tuple[int, int]]]:
        return list(await asyncio.gather(*(self.load_input(source, scope) for source in sources)))

    async def load_input(self, source: str, scope: InputScope) -> tuple[bytes, tuple[int, int]]:
        """An input image's bytes (what the task stores) and its size, once checked to decode within limits."""
        if source.startswith("data:"):
            data = parse_data_uri(source, self.limits)
        elif source.startswith(("http://", "https://")):
            data = await self.fetcher.fetch(source)
        elif source.startswith(OSS_SCHEME):
            if not scope.resolve_oss:
                raise InvalidParameter("The provided URL does not appear to be valid. Ensure it is correctly "
                                       "formatted: oss:// URLs need the header X-DashScope-OssResourceResolve: enable.")
            data = await asyncio.to_thread(self.uploads.resolve, source, scope.key_id, scope.model)
        else:
            raise InvalidURL("Image items must be http(s) URLs, data: URIs or oss:// temporary URLs.")
        image = await asyncio.to_thread(decode_image, data, self.limits)
        return data, image.size


def task_error(record: TaskRecord) -> ServiceError:
    """The stored failure of a task, as the error the sync endpoint answers with."""
    error = ServiceError(record.error_message)
    error.code = record.error_code or ServiceError.code
    error.status = record.error_status or ServiceError.status
    return error
