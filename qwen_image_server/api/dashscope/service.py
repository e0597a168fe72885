"""Submissions of the hosted API's request shapes: each becomes a ``JobRequest`` for the shared
``GenerationService``, stored as a task; sync requests then wait.

The model is admitted before the message structure is parsed, so a refused request costs nothing.
"""

from __future__ import annotations

import uuid

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
    TaskMetrics,
    Usage,
)
from qwen_image_server.api.submissions import Disconnected, GenerationService, JobRequest, PreparedJob
from qwen_image_server.engine.registry import ModelSpec
from qwen_image_server.errors import InvalidParameter
from qwen_image_server.tasks.models import TaskMode, TaskState


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


def job_request(spec: ModelSpec, prompt: str, sources: list[str], parameters: Parameters,
                negative_prompt: str | None, oss_reader: str | None = None) -> JobRequest:
    return JobRequest(
        prompt=prompt, images=list(sources), n=parameters.n, size=spec.rules.requested_size(parameters.size),
        seed=parameters.seed, negative_prompt=negative_prompt, prompt_extend=parameters.prompt_extend is not False,
        watermark=bool(parameters.watermark), oss_reader=oss_reader,
    )


class DashScopeService:
    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    async def generate(self, request: GenerationRequest, key_id: str, request_id: str, resolve_oss: bool,
                       disconnected: Disconnected) -> GenerationResponse:
        """The sync endpoint: a task plus a wait; the task id is the request id."""
        prepared = await self._generation_job(request, key_id, resolve_oss, TaskMode.SYNC)
        record = await self.generation.run_sync(prepared, key_id, request_id, disconnected)
        urls = self.generation.urls(record)
        return GenerationResponse(
            output=GenerationOutput(
                choices=[Choice(message=ResultMessage(content=[{"image": url} for url in urls]))],
                task_metric=TaskMetrics(TOTAL=prepared.job.n, SUCCEEDED=len(urls), FAILED=prepared.job.n - len(urls))),
            usage=Usage(width=prepared.job.width, height=prepared.job.height, image_count=len(urls)),
            request_id=request_id,
        )

    async def submit_generation(self, request: GenerationRequest, key_id: str, request_id: str,
                                resolve_oss: bool) -> TaskCreatedResponse:
        """Our extension: the multimodal endpoint with ``X-DashScope-Async: enable`` runs edits as tasks."""
        prepared = await self._generation_job(request, key_id, resolve_oss, TaskMode.ASYNC)
        return await self._submit_async(prepared, key_id, request_id)

    async def submit_synthesis(self, request: SynthesisRequest, key_id: str, request_id: str) -> TaskCreatedResponse:
        """text2image/image-synthesis (spec §2.1): always a task."""
        spec = await self.generation.admit(request.model, key_id, TaskMode.ASYNC)
        if spec.rules.min_images > 0:
            raise InvalidParameter(f"Model {spec.name} edits images; use the multimodal-generation endpoint.")
        prompt = request.input.prompt
        if prompt is None or not prompt.strip():
            raise InvalidParameter("Required parameter input.prompt is missing or empty.")
        negative_prompt = request.input.negative_prompt or request.parameters.negative_prompt
        prepared = await self.generation.prepare(spec, job_request(spec, prompt, [], request.parameters,
                                                                   negative_prompt), key_id)
        return await self._submit_async(prepared, key_id, request_id)

    async def _generation_job(self, request: GenerationRequest, key_id: str, resolve_oss: bool,
                              mode: TaskMode) -> PreparedJob:
        """With ``X-DashScope-OssResourceResolve: enable`` (the SDK adds it when it uploaded a local file), the
        caller's own ``oss://`` uploads can be read."""
        spec = await self.generation.admit(request.model, key_id, mode)
        prompt, sources = parse_messages(request.input)
        return await self.generation.prepare(spec, job_request(spec, prompt, sources, request.parameters,
                                                               request.parameters.negative_prompt,
                                                               key_id if resolve_oss else None), key_id)

    async def _submit_async(self, prepared: PreparedJob, key_id: str, request_id: str) -> TaskCreatedResponse:
        task_id = str(uuid.uuid4())
        await self.generation.submit(prepared, task_id, key_id, request_id, TaskMode.ASYNC)
        return TaskCreatedResponse(output=TaskCreatedOutput(task_id=task_id, task_status=TaskState.PENDING),
                                   request_id=request_id)
