"""Plain data shared by the HTTP layer, the task store, the workers and the engine: no torch, no wire models."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from PIL.Image import Image


@dataclass
class Job:
    """One generation or edit, validated, with its input images decoded."""

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

    def parameters(self) -> dict[str, Any]:
        """Everything but the images, as JSON-ready values; the images are stored beside it as bytes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "images"}

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any], images: list[Image]) -> Job:
        return cls(**parameters, images=images)

    def batch_key(self, batches_prompts: bool) -> str | None:
        """Jobs with equal keys can share one pipeline call; None means this job always runs alone.

        Only text-to-image jobs batch: the batching pipelines share one set of input images across a batch.
        Steps and guidance come from the model, so the model name stands for them.
        """
        if not batches_prompts or self.images:
            return None
        return f"{self.model}|{self.width}x{self.height}|n={self.n}"


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


@dataclass
class NewTask:
    """What a request hands the store: the job's parameters and its input images' original bytes."""

    task_id: str
    key_id: str
    request_id: str
    mode: TaskMode
    job: Job
    inputs: list[bytes]
    batch_key: str | None


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
class TaskPage:
    total: int
    records: list[TaskRecord]


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
