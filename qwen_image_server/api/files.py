"""Result images at signed URLs: the content type fixed by the name's extension, ``nosniff``, no detail on
failure. Files are read without following links (``private_files``), so the answer is the bytes themselves."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from qwen_image_server.api.dashscope.protocol import ErrorResponse
from qwen_image_server.errors import ResultNotFound
from qwen_image_server.media.storage import RESULTS_ROUTE, SERVED_MEDIA_TYPES, ResultStore, media_type

router = APIRouter(tags=["Results"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The image", "content": {
        media: {"schema": {"type": "string", "format": "binary"}} for media in SERVED_MEDIA_TYPES}},
    404: {"model": ErrorResponse, "description": "Unknown, expired or wrongly signed: no detail on purpose"},
}


@router.get(RESULTS_ROUTE + "/{name}", response_class=Response, responses=RESPONSES,
            summary="A generated image (signed URL)", operation_id="get_result_file")
@router.head(RESULTS_ROUTE + "/{name}", response_class=Response, responses=RESPONSES,
             summary="A generated image's headers (signed URL)", operation_id="head_result_file")
async def result_file(name: str, request: Request, expires: Annotated[str, Query(alias="Expires")] = "",
                      signature: Annotated[str, Query(alias="Signature")] = "") -> Response:
    store: ResultStore = request.app.state.results
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:  # str.isdigit() takes "²"
        raise ResultNotFound()
    if any(len(request.query_params.getlist(copy)) > 1 for copy in ("Expires", "Signature")):
        raise ResultNotFound()  # repeated: another reader of this URL could pick a different copy
    data = await asyncio.to_thread(store.read_signed, name, int(expires), signature)
    return Response(data, media_type=media_type(name), headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400",
        "Content-Security-Policy": "default-src 'none'"})
