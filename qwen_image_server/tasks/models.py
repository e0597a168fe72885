"""Plain data shared by the HTTP layer, the task store, the workers and the engine: no torch, no wire models."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from PIL.Image import Image


@dataclass
class Job:
    """One generation or edit, validated, with its input images decoded.

    ``mask`` (inpainting only) is white where ``images[0]`` is to be edited; the task stores it as its last
    input. ``output_format`` is how the worker encodes the results: ``png``, ``jpeg`` or ``webp``, the lossy
    ones at ``output_quality`` (0-100, Pillow's default when None).
    """

    model: str
    prompt: str
    width: int
    height: int
    seed: int
    n: int = 1
    images: list[Image] = field(default_factory=list)
    negative_prompt: str | None = None
    prompt_extend: bool = False
    watermark: bool = False
    mask: Image | None = None
    output_format: str = "png"
    output_quality: int | None = None

    def parameters(self) -> dict[str, Any]:
        """Everything but the images and mask, as JSON-ready values; those are stored beside it as bytes."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("images", "mask")}
        return {**values, "masked": self.mask is not None}

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any], inputs: list[Image]) -> Job:
        """The job of stored parameters and its stored inputs, decoded (the mask, if any, last)."""
        values = dict(parameters)
        if values.pop("masked", False):
            return cls(**values, images=inputs[:-1], mask=inputs[-1])
        return cls(**values, images=inputs)


@dataclass
class JobResult:
    images: list[Image]
    actual_prompt: str | None
    seconds: float


class TaskState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED)


class TaskMode(enum.StrEnum):
    SYNC = "sync"
    ASYNC = "async"


class Refusal(enum.Enum):
    """Why the store would not take one more task."""

    QUEUE_FULL = "queue_full"  # the server-wide bound on PENDING tasks
    KEY_SHARE = "key_share"  # this key's share of that bound
    KEY_COST = "key_cost"  # this key's work in flight (PENDING and RUNNING), in megapixel-steps
    KEY_RESULTS = "key_results"  # bytes of this key's stored results


@dataclass(frozen=True)
class Quota:
    """The bounds one more task must stay within; None: no bound."""

    max_pending: int
    max_pending_per_key: int | None = None
    max_cost_per_key: float | None = None
    max_result_bytes_per_key: int | None = None


@dataclass
class NewTask:
    """What a request hands the store: the job's parameters and its input images' original bytes.

    ``cost`` is the task's work in megapixel-steps (output megapixels x images x transformer calls), what
    a key's budget of work in flight counts.
    """

    task_id: str
    key_id: str
    request_id: str
    mode: TaskMode
    job: Job
    inputs: list[bytes]
    batch_key: str | None
    cost: float = 0.0


@dataclass
class TaskRecord:
    """A task as stored. Times are Unix seconds; ``outputs`` are result file names, signed when shown."""

    task_id: str
    key_id: str
    request_id: str
    mode: TaskMode
    model: str
    state: TaskState
    parameters: dict[str, Any]
    batch_key: str | None
    attempt: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    outputs: list[str] = field(default_factory=list)
    actual_prompt: str | None = None
    error_code: str | None = None
    error_status: int | None = None
    error_message: str | None = None


@dataclass
class TaskFailure:
    code: str
    status: int
    message: str


@dataclass
class TaskListing:
    """A task as the list endpoint shows it: no parameters, so listing never decodes a stored prompt."""

    task_id: str
    key_id: str
    request_id: str
    model: str
    state: TaskState
    submitted_at: float
    started_at: float | None
    finished_at: float | None


@dataclass
class TaskPage:
    total: int
    rows: list[TaskListing]


@dataclass
class TaskFilter:
    """The list endpoint's filters; ``key_id`` is always the caller's own."""

    key_id: str
    model: str | None = None
    state: TaskState | None = None
    submitted_from: float | None = None
    submitted_to: float | None = None
    page_no: int = 1
    page_size: int = 10
