"""The engine's contract: plain, picklable data in and out, and the small protocol every engine implements.

The task layer turns stored tasks into ``EngineJob``\\s and the registry turns an API name into a ``Plan``
before the engine is called; the engine knows nothing of tasks, HTTP or API names. So the in-process engine
on a worker thread, a Ray Serve replica and a benchmark drive an engine the same way.

Torch-free on purpose: the task and HTTP layers build these.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from PIL.Image import Image


@dataclass(frozen=True)
class Options:
    """How the weights are loaded and run; part of a pipeline's identity (two plans with different options
    never share a loaded pipeline)."""

    cfg_batch: bool = True  # conditional and unconditional passes in one transformer call


@dataclass(frozen=True)
class Plan:
    """Everything the engine needs to know about a model: its weights and how to sample them."""

    weights: str  # a local directory or a Hugging Face repository id
    family: str  # a key of ``engine.families.FAMILIES``
    steps: int
    guidance: float  # true classifier-free guidance scale; at most 1 means none
    prompt_token_limit: int
    options: Options = field(default_factory=Options)

    @property
    def load_key(self) -> tuple[str, str, Options]:
        return self.weights, self.family, self.options


@dataclass
class EngineJob:
    """One request's work: ``n`` images of ``prompt``, image ``i`` seeded with ``seed + i``.

    ``mask`` (inpainting) is white where ``images[0]`` is to be edited. ``prompt_extend`` asks for the prompt
    to be rewritten first."""

    prompt: str
    seed: int
    n: int = 1
    negative_prompt: str | None = None
    images: list[Image] = field(default_factory=list)
    mask: Image | None = None
    prompt_extend: bool = False


@dataclass
class EngineBatch:
    """Jobs that run in one call: one plan and one output size (the engine's ``batch_key`` says which may)."""

    plan: Plan
    width: int
    height: int
    jobs: list[EngineJob]


@dataclass(frozen=True)
class Progress:
    """A denoising step done: an event, never a callback that does I/O."""

    step: int
    total: int


@dataclass
class JobOutput:
    images: list[Image]
    actual_prompt: str | None  # the rewritten prompt, when prompt_extend rewrote it


Event = Progress | list[JobOutput]


class GenerationEngine(Protocol):
    """What drives an engine: a worker thread in this process, or a remote replica."""

    def load(self) -> None:
        """Loads every plan the engine serves; blocks until done."""
        ...

    def ready(self) -> bool: ...

    def batch_key(self, plan: Plan, job: EngineJob, width: int, height: int) -> str | None:
        """Equal keys may share one ``run``; None: the job always runs alone."""
        ...

    def run(self, batch: EngineBatch) -> Iterator[Event]:
        """``Progress`` after each denoising step, then one ``JobOutput`` per job, in order."""
        ...

    def close(self) -> None: ...
