"""Wire models of OpenAI's images API (``/v1/images/generations`` and ``/v1/images/edits``) and of its
models API (``/v1/models``).

Unknown fields (``quality``, ``background``, ``style``, ``user``, ...) are tolerated and logged, as for any
compatible surface. ``negative_prompt``, ``seed`` and ``prompt_extend`` are our extensions.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from qwen_image_server.api.wire import WireInt, WireModel

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageOptions(WireModel):
    """What both endpoints take besides their input images."""

    model: str | None = None
    prompt: str = Field(min_length=1)
    n: WireInt | None = None
    size: str | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: WireInt | None = Field(None, ge=0, le=100)
    stream: bool | None = None
    negative_prompt: str | None = None
    seed: WireInt | None = None
    prompt_extend: bool | None = None


class GenerationsRequest(ImageOptions):
    """The JSON body of ``/v1/images/generations``."""


class EditsForm(ImageOptions):
    """The multipart form of ``/v1/images/edits``: one image as ``image``, several as repeated ``image[]``."""

    model_config = ConfigDict(populate_by_name=True)

    image: list[UploadFile] = Field(default_factory=list)
    image_array: list[UploadFile] = Field(default_factory=list, alias="image[]")
    mask: UploadFile | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}
