"""Liveness and readiness: ``/readyz`` turns 200 once every served model is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from qwen_image_server.api.errors import error_response, request_id_of

router = APIRouter(tags=["Health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models are loaded and requests will run")
async def readyz(request: Request) -> JSONResponse:
    if all(runner.ready for runner in request.app.state.runners):
        return JSONResponse({"status": "ready", "models": request.app.state.registry.names()})
    return error_response(request_id_of(request), 503, "ModelUnavailable", "Models are still loading.")
