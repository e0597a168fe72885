"""Result images at signed URLs: the content type fixed by the name's extension, ``nosniff``, no detail on
failure."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from qwen_image_server.errors import ResultNotFound
from qwen_image_server.media.storage import RESULTS_ROUTE, ResultStore, media_type

router = APIRouter(tags=["Results"])


@router.api_route(RESULTS_ROUTE + "/{name}", methods=["GET", "HEAD"], response_class=FileResponse,
                  summary="A generated image (signed URL)")
async def result_file(name: str, request: Request) -> FileResponse:
    store: ResultStore = request.app.state.results
    expires = request.query_params.get("Expires", "")
    signature = request.query_params.get("Signature", "")
    if not expires.isdigit() or len(expires) > 12:
        raise ResultNotFound()
    path = store.path_for(name, int(expires), signature)
    return FileResponse(path, media_type=media_type(path.name), headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400",
        "Content-Security-Policy": "default-src 'none'"})
