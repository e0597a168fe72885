"""Thin routes of the OpenAI-compatible images and models APIs: parse, authenticate, hand to the service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response

from qwen_image_server.api import streaming
from qwen_image_server.api.auth import ApiKey, require_key
from qwen_image_server.api.bodies import documented_body, json_body
from qwen_image_server.api.errors import request_id_of
from qwen_image_server.api.openai import models
from qwen_image_server.api.openai.protocol import (
    ERROR_RESPONSES,
    EditsForm,
    GenerationsRequest,
    ImagesResponse,
    Model,
    ModelList,
)
from qwen_image_server.api.openai.service import OpenAIImagesService

router = APIRouter(prefix="/v1", tags=["OpenAI"])


def get_service(request: Request) -> OpenAIImagesService:
    return request.app.state.openai_images


Service = Annotated[OpenAIImagesService, Depends(get_service)]
RESPONSES = {**ERROR_RESPONSES, 200: {"content": streaming.DOCUMENTED}}  # JSON, or events with stream=true
GenerationsBody = Annotated[GenerationsRequest, json_body(GenerationsRequest)]


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True,
             responses=RESPONSES, openapi_extra=documented_body(GenerationsRequest),
             summary="Generate images from a prompt (OpenAI images API)")
async def generations(body: GenerationsBody, request: Request, key_id: ApiKey,
                      service: Service) -> ImagesResponse | Response:
    answer = service.generate(body, key_id, request_id_of(request), request.is_disconnected)
    if body.stream:
        return streaming.openai_stream(service.completed_events(answer), "image_generation")
    return await answer


@router.post("/images/edits", response_model=ImagesResponse, response_model_exclude_none=True,
             responses=RESPONSES, summary="Edit uploaded images, or inpaint with a mask (OpenAI images API)")
async def edits(form: Annotated[EditsForm, Form(media_type="multipart/form-data")], request: Request, key_id: ApiKey,
                service: Service) -> ImagesResponse | Response:
    images, mask = await service.edit_inputs(form)
    answer = service.edit(form, images, mask, key_id, request_id_of(request), request.is_disconnected)
    if form.stream:
        return streaming.openai_stream(service.completed_events(answer), "image_edit")
    return await answer


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES, dependencies=[Depends(require_key)],
            summary="The served models (OpenAI models API)")
async def list_models(request: Request) -> ModelList:
    return models.model_list(request.app.state.registry, request.app.state.started_at)


@router.get("/models/{model}", response_model=Model, responses=ERROR_RESPONSES, dependencies=[Depends(require_key)],
            summary="One served model; an unknown name is a 404 model_not_found (OpenAI models API)")
async def retrieve_model(model: str, request: Request) -> Model:
    return models.model_object(request.app.state.registry, model, request.app.state.started_at)
