"""Liveness and readiness: ``/readyz`` turns 200 once every served model is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from qwen_image_server.api.dashscope.protocol import ErrorResponse
from qwen_image_server.api.errors import error_response, request_id_of

router = APIRouter(tags=["Health"])


class Readiness(BaseModel):
    status: str
    models: list[str]


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models are loaded and requests will run",
            responses={200: {"model": Readiness}, 503: {"model": ErrorResponse, "description": "Models are loading"}})
async def readyz(request: Request) -> JSONResponse:
    if all(runner.ready for runner in request.app.state.runners):
        return JSONResponse({"status": "ready", "models": request.app.state.registry.names()})
    return error_response(request_id_of(request), 503, "ModelUnavailable", "Models are still loading.")
