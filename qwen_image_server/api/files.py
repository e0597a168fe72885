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
    expires, signature = _single(request, "Expires"), _single(request, "Signature")
    # isdigit() alone admits "²" (int() refuses it) and other scripts' digits: ASCII only.
    if not (expires.isascii() and expires.isdigit()) or len(expires) > 12:
        raise ResultNotFound()
    path = store.path_for(name, int(expires), signature)
    return FileResponse(path, media_type=media_type(path.name), headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400",
        "Content-Security-Policy": "default-src 'none'"})


def _single(request: Request, parameter: str) -> str:
    """The one value of ``parameter``; a repeated one is refused, so no reader can pick a different copy."""
    values = request.query_params.getlist(parameter)
    if len(values) != 1:
        raise ResultNotFound()
    return values[0]
