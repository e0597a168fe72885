"""Wire models of the multimodal-generation endpoint (spec §1), tolerant of unknown fields.

The hosted API ignores parameters it does not know (the SDK sends ``result_format``, ``stream``, ...),
so extra fields are accepted and logged, never rejected.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from qwen_image_server.api.wire import WireInt, WireModel
from qwen_image_server.engine.rules import SizeRule


class ContentItem(WireModel):
    image: str | None = None
    text: str | None = None


class Message(WireModel):
    role: str
    content: list[ContentItem] | str


class Input(WireModel):
    messages: list[Message] | None = None


class Parameters(WireModel):
    n: WireInt | None = None
    size: str | None = None
    seed: WireInt | None = None
    negative_prompt: str | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None


class GenerationRequest(WireModel):
    model: str = Field(min_length=1)
    input: Input
    parameters: Parameters = Field(default_factory=Parameters)


class SynthesisInput(WireModel):
    prompt: str | None = None
    negative_prompt: str | None = None


class SynthesisRequest(WireModel):
    """The text2image/image-synthesis body (spec §2.1): the prompt sits in ``input``, not in messages."""

    model: str = Field(min_length=1)
    input: SynthesisInput
    parameters: Parameters = Field(default_factory=Parameters)


class ResultMessage(BaseModel):
    role: str = "assistant"
    content: list[dict[str, str]]


class Choice(BaseModel):
    finish_reason: str = "stop"
    message: ResultMessage


class TaskMetrics(BaseModel):
    TOTAL: int
    SUCCEEDED: int
    FAILED: int


class GenerationOutput(BaseModel):
    choices: list[Choice]
    task_metric: TaskMetrics  # singular on sync answers, as captured from the hosted service


class Usage(BaseModel):
    width: int
    height: int
    image_count: int


class GenerationResponse(BaseModel):
    output: GenerationOutput
    usage: Usage
    request_id: str


class TaskCreatedOutput(BaseModel):
    task_id: str
    task_status: str


class TaskCreatedResponse(BaseModel):
    output: TaskCreatedOutput
    request_id: str


class TaskResult(BaseModel):
    url: str | None = None
    orig_prompt: str | None = None
    actual_prompt: str | None = None
    code: str | None = None
    message: str | None = None


class TaskProgress(BaseModel):
    """Our extension: denoising steps done, while a task runs."""

    step: int
    total_steps: int


class TaskOutput(BaseModel):
    task_id: str
    task_status: str
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    results: list[TaskResult] | None = None
    task_metrics: TaskMetrics | None = None
    progress: TaskProgress | None = None
    code: str | None = None
    message: str | None = None


class TaskUsage(BaseModel):
    image_count: int
    width: int | None = None
    height: int | None = None


class TaskResponse(BaseModel):
    request_id: str
    output: TaskOutput
    usage: TaskUsage | None = None


class TaskSummary(BaseModel):
    task_id: str
    status: str
    model_name: str
    api_key_id: str
    request_id: str
    region: str
    gmt_create: int
    start_time: int | None = None
    end_time: int | None = None


class TaskJob(BaseModel):
    """A listed task as SDK 2.0's ``images.jobs.list`` reads it: its times are strings, as in a task's own
    answer, where the 1.x rows under ``data`` carry milliseconds."""

    task_id: str
    task_status: str
    model_name: str
    request_id: str
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None


class TaskListResponse(BaseModel):
    """The hosted list's shape (``data``, read by SDK 1.x), with the same tasks under ``tasks`` for SDK 2.0."""

    request_id: str
    total: int
    total_page: int
    page_no: int
    page_size: int
    data: list[TaskSummary]
    tasks: list[TaskJob]


class CancelResponse(BaseModel):
    request_id: str


class UploadPolicy(BaseModel):
    """The upload credential, with the keys the SDK reads (spec §4.5) and the hosted API's extras."""

    policy: str
    signature: str
    upload_dir: str
    upload_host: str
    expire_in_seconds: int
    max_file_size_mb: int
    capacity_limit_mb: int
    oss_access_key_id: str
    x_oss_object_acl: str
    x_oss_forbid_overwrite: str


class UploadPolicyResponse(BaseModel):
    data: UploadPolicy
    request_id: str


class UploadedResponse(BaseModel):
    """Our answer to the form upload (OSS answers an empty 200): the reference to put in a request."""

    url: str
    request_id: str


class ModelCapabilities(BaseModel):
    """Our extension: what a model accepts, so a client can shape a request before sending it."""

    min_images: int
    max_images: int
    max_n: int
    size_rule: SizeRule
    default_size: str | None
    prompt_extend: bool
    steps: int


class ModelInfo(BaseModel):
    model: str
    provider: str = "qwen"
    opensource: bool = True
    license: str  # our extension: the licence of the weights behind the name (several, when routed)
    commercial_use: bool
    capabilities: ModelCapabilities


class ModelsOutput(BaseModel):
    models: list[ModelInfo]
    page_no: int
    page_size: int
    total: int


class ModelsResponse(BaseModel):
    request_id: str
    output: ModelsOutput


class ErrorResponse(BaseModel):
    request_id: str
    code: str
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 429, 500, 503)
}
