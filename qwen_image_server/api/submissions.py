"""Submissions shared by every API surface: admit a request, build its ``Job``, store it as a task, and for
sync requests wait for it.

Each surface (DashScope, OpenAI) translates its wire shapes into a ``JobRequest`` and its answers from the
finished ``TaskRecord``. Checks run cheapest first (model, rate limits, parameters, queue room) so a bad or
refused request costs nothing before any image is downloaded or decoded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from PIL.Image import Image

from qwen_image_server.api.limits import RateLimiter
from qwen_image_server.engine.batching import batch_key
from qwen_image_server.engine.registry import ModelRegistry, ModelSpec
from qwen_image_server.engine.rules import NEGATIVE_PROMPT_CHARS, Size, check_seed
from qwen_image_server.errors import InvalidParameter, InvalidURL, ModelUnavailable, ServiceError
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import ImageLimits, decode_image, decode_mask, encode_image, parse_data_uri
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.media.uploads import OSS_SCHEME, UploadStore
from qwen_image_server.tasks.models import Job, NewTask, TaskMode, TaskRecord, TaskState
from qwen_image_server.tasks.queue import TaskQueue

log = logging.getLogger(__name__)

Disconnected = Callable[[], Awaitable[bool]]
ImageSource = str | bytes  # an http(s) URL or data: URI to load, or the bytes of an uploaded file


@dataclass
class JobRequest:
    """One request in the surfaces' common terms, before any input is loaded."""

    prompt: str
    images: list[ImageSource] = field(default_factory=list)
    mask: bytes | None = None
    n: int | None = None
    size: Size | None = None
    size_separator: str = "*"  # how the surface writes sizes (W*H, WxH), for error messages
    seed: int | None = None
    negative_prompt: str | None = None
    prompt_extend: bool = True
    watermark: bool = False
    output_format: str = "png"
    output_quality: int | None = None
    oss_reader: str | None = None  # the key id whose oss:// uploads this request may read; None: refused


@dataclass
class PreparedJob:
    """A validated job and the bytes the task stores beside it (input images, then the mask if any)."""

    spec: ModelSpec
    job: Job
    inputs: list[bytes]
    image_sizes: list[Size]

    @property
    def batch_key(self) -> str | None:
        """Jobs with equal keys can share one engine run (the engine's rule, ``engine/batching.py``); None: this
        job always runs alone. The output format is applied per task after the run, so it does not matter."""
        return batch_key(self.spec.plan, self.job.n, self.job.width, self.job.height, self.image_sizes,
                         self.job.mask is not None)


def check_mask_support(spec: ModelSpec, registry: ModelRegistry, image_count: int) -> None:
    if spec.family.inpaint_pipeline_class is None:
        takers = ", ".join(served.name for served in registry.specs()
                           if served.family.inpaint_pipeline_class is not None)
        raise InvalidParameter(f"Model {spec.name} does not take a mask; models that inpaint with a mask: "
                               f"{takers or 'none served here'}.", param="mask")
    if image_count != 1:
        raise InvalidParameter(f"Inpainting with a mask takes exactly one image; got {image_count}.", param="image")


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

    async def admit(self, model: str, key_id: str, mode: TaskMode) -> ModelSpec:
        """The model's spec, once it is served, the engines are ready and the key is within its limits.

        Limits count per served weights: every name on the same weights shares the key's windows."""
        spec = self.registry.get(model)
        if not self.engines_ready():
            raise ModelUnavailable("Models are still loading, please try again later.")
        self.rate_limiter.hit(key_id, spec)
        if mode is TaskMode.ASYNC:
            active = await asyncio.to_thread(self.queue.store.count_active, key_id,
                                             self.registry.names_sharing(spec), mode)
            self.rate_limiter.check_concurrency(spec.name, active)
        return spec

    async def prepare(self, spec: ModelSpec, request: JobRequest, key_id: str) -> PreparedJob:
        """Checks the request against the model's rules and the key's quota, then loads and decodes its inputs.

        Prompts are bounded here, so the stored task and every tokenizer see the bounded text only."""
        spec, n, seed = checked_request(spec, self.registry, request)
        # Early, before any input is fetched; the size may still follow the inputs (edits: about 1 MP).
        estimated_size = request.size or spec.rules.text_to_image_size or (1024, 1024)
        await self.queue.check_capacity(key_id, task_cost(spec, estimated_size, n))
        inputs = await self.load_inputs(request.images, request.oss_reader, spec.name)
        last_size = inputs[-1][1] if inputs else None
        job = job_for(spec, request, n, seed, last_size)
        stored = [data for data, _size in inputs]
        if request.mask is not None:
            job.mask = await asyncio.to_thread(load_mask, request.mask, last_size, self.limits)
            stored.append(encode_image(job.mask))
        return PreparedJob(spec, job, stored, [size for _data, size in inputs])

    async def submit(self, prepared: PreparedJob, task_id: str, key_id: str, request_id: str,
                     mode: TaskMode) -> None:
        job = prepared.job
        await self.queue.submit(NewTask(task_id, key_id, request_id, mode, job, prepared.inputs,
                                        prepared.batch_key, task_cost(prepared.spec, (job.width, job.height), job.n)))

    async def run_sync(self, prepared: PreparedJob, key_id: str, request_id: str,
                       disconnected: Disconnected) -> TaskRecord:
        """A task plus a wait; the succeeded record, or the task's failure raised. The task id is the request id,
        so a client that lost the connection while its task ran can still fetch the result by it."""
        started = time.perf_counter()
        await self.submit(prepared, request_id, key_id, request_id, TaskMode.SYNC)
        record = await self.queue.wait(request_id, key_id, disconnected)
        log.info("request %s: %s, %d image(s) %dx%d, %s in %.3f s", request_id, prepared.spec.name,
                 len(record.outputs), prepared.job.width, prepared.job.height, record.state,
                 time.perf_counter() - started)
        if record.state is TaskState.FAILED:
            raise task_error(record)
        if record.state is TaskState.CANCELED:
            raise ServiceError("The request was canceled: the client disconnected before it started.")
        return record

    def urls(self, record: TaskRecord) -> list[str]:
        return self.results.urls(record.outputs, record.finished_at)

    async def load_inputs(self, sources: list[ImageSource], oss_reader: str | None,
                          model: str) -> list[tuple[bytes, tuple[int, int]]]:
        return list(await asyncio.gather(*(self.load_input(source, oss_reader, model) for source in sources)))

    async def load_input(self, source: ImageSource, oss_reader: str | None,
                         model: str) -> tuple[bytes, tuple[int, int]]:
        """An input image's bytes (what the task stores) and its size, once checked to decode within limits.

        An ``oss://`` upload is read only for ``oss_reader``, the key that uploaded it, and for its model."""
        if isinstance(source, bytes):
            data = source
        elif source.startswith("data:"):
            data = parse_data_uri(source, self.limits)
        elif source.startswith(("http://", "https://")):
            data = await self.fetcher.fetch(source)
        elif source.startswith(OSS_SCHEME):
            if oss_reader is None:
                raise InvalidParameter("The provided URL does not appear to be valid. Ensure it is correctly "
                                       "formatted: oss:// URLs need the header X-DashScope-OssResourceResolve: enable.")
            data = await asyncio.to_thread(self.uploads.resolve, source, oss_reader, model)
        else:
            raise InvalidURL("Image items must be http(s) URLs, data: URIs or oss:// temporary URLs.")
        image = await asyncio.to_thread(decode_image, data, self.limits)
        return data, image.size



def checked_request(spec: ModelSpec, registry: ModelRegistry, request: JobRequest) -> tuple[ModelSpec, int, int]:
    """The spec that serves the request (chosen by its image count), its ``n`` and its seed, once the model's
    rules allow the request. Every path into the engine checks a request here: the API and the command line."""
    spec = spec.serving(len(request.images))
    if request.mask is None:
        spec.rules.check_image_count(len(request.images))
    else:
        check_mask_support(spec, registry, len(request.images))
    n = 1 if request.n is None else request.n
    spec.rules.check_n(n)
    return spec, n, check_seed(request.seed)


def job_for(spec: ModelSpec, request: JobRequest, n: int, seed: int, last_image_size: Size | None) -> Job:
    """The job of a checked request (its images and mask are added by the caller), with bounded prompts."""
    width, height = spec.rules.output_size(request.size, last_image_size, spec.family.output_multiple,
                                           request.size_separator)
    negative_prompt = (request.negative_prompt or "")[:NEGATIVE_PROMPT_CHARS] if spec.rules.negative_prompt else ""
    return Job(model=spec.name, prompt=spec.rules.bound_prompt(request.prompt), width=width, height=height,
               seed=seed, n=n, negative_prompt=negative_prompt or None,
               prompt_extend=request.prompt_extend and spec.rules.prompt_extend,
               watermark=request.watermark, output_format=request.output_format,
               output_quality=request.output_quality)


def load_mask(data: bytes, image_size: Size | None, limits: ImageLimits) -> Image:
    """The mask in black and white (white: edit), checked against the image it applies to."""
    mask = decode_mask(data, limits)
    if mask.size != image_size:
        raise InvalidParameter(f"The mask is {mask.width}x{mask.height} pixels; it must match the image's "
                               f"size{f' ({image_size[0]}x{image_size[1]})' if image_size else ''}.",
                               param="mask")
    if mask.getbbox() is None:
        raise InvalidParameter("The mask marks no pixel to edit: make the area to edit fully transparent.",
                               param="mask")
    return mask


def task_cost(spec: ModelSpec, size: Size, n: int) -> float:
    """A task's work in megapixel-steps: output megapixels x images x transformer calls (two a step under CFG)."""
    calls_per_step = 2 if spec.true_cfg_scale > 1 else 1
    return size[0] * size[1] / 1e6 * n * spec.steps * calls_per_step


def task_error(record: TaskRecord) -> ServiceError:
    """The stored failure of a task, as the error the sync endpoint answers with."""
    error = ServiceError(record.error_message)
    error.code = record.error_code or ServiceError.code
    error.status = record.error_status or ServiceError.status
    return error
