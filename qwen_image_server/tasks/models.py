"""What the HTTP layer hands the engine, and what comes back: plain data, no torch, no wire models."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL.Image import Image


@dataclass
class Job:
    """One generation or edit request, validated and with its input images decoded."""

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


@dataclass
class JobResult:
    images: list[Image]
    actual_prompt: str | None
    seconds: float
