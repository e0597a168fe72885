"""The playground page at ``/``: static files served as they are (no build step).

The page keeps an API key in the browser, so its HTML carries a strict Content-Security-Policy: only this
origin's own script and style run, and it cannot be framed.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIRECTORY = Path(__file__).resolve().parent.parent / "playground"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground_page() -> FileResponse:
    return FileResponse(PAGE_DIRECTORY / "index.html", headers=PAGE_HEADERS)


def install_playground(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/playground", StaticFiles(directory=PAGE_DIRECTORY / "assets"), name="playground")
