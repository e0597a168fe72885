"""JSON request bodies, parsed so that no body can hold the event loop.

FastAPI would decode a JSON body with ``json.loads`` and validate it on the event loop: a 28 MiB body of
millions of tiny items then blocks every other client for tens of seconds and takes gigabytes. Here a body
first passes a cheap structural check that stops at the first container holding too many items or nesting
too deep (a streaming parse, so an oversized body costs microseconds to refuse), and only then is it
validated by pydantic; a large body does both off the loop.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any, TypeVar

import ijson
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from qwen_image_server.errors import InvalidParameter

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_CONTAINER_ITEMS = 64  # keys of an object or elements of an array: a request needs far fewer
MAX_DEPTH = 10
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies parse on the loop: quicker than a thread hop
COMPONENT_REF = "#/components/schemas/{model}"
COMPONENTS_EXTENSION = "x-components"

_OPENING = {"start_map", "start_array"}
_CLOSING = {"end_map", "end_array"}
_VALUES = {"string", "number", "boolean", "null", "start_map", "start_array"}


def check_shape(raw: bytes) -> None:
    """Refuses a body whose structure no request needs, reading only as far as the first excess."""
    counts: list[int] = []
    try:
        for event, _value in ijson.basic_parse(io.BytesIO(raw)):
            if event in _VALUES and counts:
                counts[-1] += 1
                if counts[-1] > MAX_CONTAINER_ITEMS:
                    raise InvalidParameter(f"The request body has a list or object of more than "
                                           f"{MAX_CONTAINER_ITEMS} items; no request needs that many.")
            if event in _OPENING:
                counts.append(0)
                if len(counts) > MAX_DEPTH:
                    raise InvalidParameter(f"The request body nests deeper than {MAX_DEPTH} levels.")
            elif event in _CLOSING:
                counts.pop()
    except (ijson.JSONError, ValueError):  # UnicodeDecodeError too: bytes that are not UTF-8
        pass  # pydantic reports malformed JSON in the API's own words


def parse_json(model: type[ModelT], raw: bytes) -> ModelT:
    """The validated body; pydantic's parser also refuses strings that are not valid Unicode (lone surrogates)."""
    check_shape(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        errors = [{**problem, "loc": ("body", *problem["loc"])} for problem in error.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def json_body(model: type[ModelT]) -> Any:
    """A dependency giving the route its body as ``model`` (document it with ``documented_body``)."""

    async def parse(request: Request) -> ModelT:
        raw = await request.body()
        if len(raw) <= INLINE_PARSE_BYTES:
            return parse_json(model, raw)
        return await asyncio.to_thread(parse_json, model, raw)

    return Depends(parse)


def documented_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route whose body ``json_body`` parses: its request body, and the schemas it
    refers to under ``x-components``, which ``api/openapi.py`` moves into the schema's components."""
    schema = model.model_json_schema(ref_template=COMPONENT_REF)
    components = {**schema.pop("$defs", {}), model.__name__: schema}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "$ref": COMPONENT_REF.format(model=model.__name__)}}}}, COMPONENTS_EXTENSION: components}
