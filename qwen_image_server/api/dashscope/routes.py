"""Thin routes of the DashScope-compatible API: parse, authenticate, hand to the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request

from qwen_image_server.api.auth import ApiKey
from qwen_image_server.api.dashscope.protocol import ERROR_RESPONSES, GenerationRequest, GenerationResponse
from qwen_image_server.api.dashscope.service import GenerationService
from qwen_image_server.api.errors import request_id_of
from qwen_image_server.errors import AccessDenied

router = APIRouter(prefix="/api/v1", tags=["DashScope"])


def get_service(request: Request) -> GenerationService:
    return request.app.state.generation


Service = Annotated[GenerationService, Depends(get_service)]


@router.post("/services/aigc/multimodal-generation/generation", response_model=GenerationResponse,
             responses=ERROR_RESPONSES, summary="Edit images or generate from text (synchronous)")
async def multimodal_generation(
    body: GenerationRequest,
    request: Request,
    _key: ApiKey,
    service: Service,
    x_dashscope_async: Annotated[str | None, Header()] = None,
) -> GenerationResponse:
    if (x_dashscope_async or "").lower() == "enable":
        raise AccessDenied("Current user api does not support asynchronous calls.")
    return await service.generate(body, request_id_of(request))
