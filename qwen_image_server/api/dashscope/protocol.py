"""Wire models of the multimodal-generation endpoint (spec §1), tolerant of unknown fields.

The hosted API ignores parameters it does not know (the SDK sends ``result_format``, ``stream``, ...),
so extra fields are accepted and logged, never rejected.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

log = logging.getLogger(__name__)


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> WireModel:
        if self.model_extra:
            log.debug("ignoring unknown fields of %s: %s", type(self).__name__, sorted(self.model_extra))
        return self


class ContentItem(WireModel):
    image: str | None = None
    text: str | None = None


class Message(WireModel):
    role: str
    content: list[ContentItem] | str


class Input(WireModel):
    messages: list[Message] | None = None


class Parameters(WireModel):
    n: int | None = None
    size: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    prompt_extend: bool | None = None
    watermark: bool | None = None


class GenerationRequest(WireModel):
    model: str = Field(min_length=1)
    input: Input
    parameters: Parameters = Field(default_factory=Parameters)


class ResultMessage(BaseModel):
    role: str = "assistant"
    content: list[dict[str, str]]


class Choice(BaseModel):
    finish_reason: str = "stop"
    message: ResultMessage


class GenerationOutput(BaseModel):
    choices: list[Choice]


class Usage(BaseModel):
    width: int
    height: int
    image_count: int


class GenerationResponse(BaseModel):
    output: GenerationOutput
    usage: Usage
    request_id: str


class ErrorResponse(BaseModel):
    request_id: str
    code: str
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 500, 503)
}
