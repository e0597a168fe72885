"""Thin routes of the DashScope-compatible API: parse, authenticate, hand to the service or the task views."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Query, Request, Response, UploadFile

from qwen_image_server.api import streaming
from qwen_image_server.api.auth import ApiKey, require_key
from qwen_image_server.api.bodies import documented_body, json_body
from qwen_image_server.api.dashscope import models
from qwen_image_server.api.dashscope.protocol import (
    ERROR_RESPONSES,
    CancelResponse,
    GenerationRequest,
    GenerationResponse,
    ModelsResponse,
    SynthesisRequest,
    TaskCreatedResponse,
    TaskListResponse,
    TaskResponse,
    UploadedResponse,
    UploadPolicyResponse,
)
from qwen_image_server.api.dashscope.service import DashScopeService
from qwen_image_server.api.dashscope.tasks import MAX_PAGE_NO, MAX_PAGE_SIZE, TaskViews
from qwen_image_server.api.dashscope.uploads import UploadService
from qwen_image_server.api.errors import request_id_of
from qwen_image_server.errors import AccessDenied
from qwen_image_server.media.uploads import UploadForm

router = APIRouter(prefix="/api/v1", tags=["DashScope"])


def get_service(request: Request) -> DashScopeService:
    return request.app.state.dashscope


def get_task_views(request: Request) -> TaskViews:
    return request.app.state.task_views


def get_upload_service(request: Request) -> UploadService:
    return request.app.state.upload_service


Service = Annotated[DashScopeService, Depends(get_service)]
Tasks = Annotated[TaskViews, Depends(get_task_views)]
Uploads = Annotated[UploadService, Depends(get_upload_service)]
AsyncHeader = Annotated[str | None, Header(
    alias="X-DashScope-Async", description="`enable`: answer a task id at once, then poll /api/v1/tasks/{task_id}")]
OssResolveHeader = Annotated[str | None, Header(
    alias="X-DashScope-OssResourceResolve", description="`enable`: resolve oss:// references to uploaded files")]
GenerationBody = Annotated[GenerationRequest, json_body(GenerationRequest)]
SynthesisBody = Annotated[SynthesisRequest, json_body(SynthesisRequest)]
PageNo = Annotated[int, Query(ge=1, le=MAX_PAGE_NO)]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]


def enabled(header: str | None) -> bool:
    """The DashScope switch headers (``X-DashScope-Async``, ``X-DashScope-OssResourceResolve``) take ``enable``."""
    return (header or "").strip().lower() == "enable"


@router.post("/services/aigc/multimodal-generation/generation",
             response_model=GenerationResponse | TaskCreatedResponse,
             responses={**ERROR_RESPONSES, 200: {"content": streaming.DOCUMENTED}},
             openapi_extra=documented_body(GenerationRequest),
             summary="Edit images or generate from text; as a task with X-DashScope-Async: enable (our extension)")
async def multimodal_generation(body: GenerationBody, request: Request, key_id: ApiKey, service: Service,
                                x_dashscope_async: AsyncHeader = None, x_dashscope_ossresourceresolve:
                                OssResolveHeader = None) -> GenerationResponse | TaskCreatedResponse | Response:
    resolve_oss = enabled(x_dashscope_ossresourceresolve)
    if enabled(x_dashscope_async):
        return await service.submit_generation(body, key_id, request_id_of(request), resolve_oss)
    answer = service.generate(body, key_id, request_id_of(request), resolve_oss, request.is_disconnected)
    if streaming.wants_events(request):
        return streaming.dashscope_stream(answer, request_id_of(request))
    return await answer


@router.post("/services/aigc/text2image/image-synthesis", response_model=TaskCreatedResponse,
             responses=ERROR_RESPONSES, openapi_extra=documented_body(SynthesisRequest),
             summary="Generate from text as a task (needs X-DashScope-Async: enable)")
async def image_synthesis(body: SynthesisBody, request: Request, key_id: ApiKey, service: Service,
                          x_dashscope_async: AsyncHeader = None) -> TaskCreatedResponse:
    if not enabled(x_dashscope_async):
        raise AccessDenied("current user api does not support synchronous calls")
    return await service.submit_synthesis(body, key_id, request_id_of(request))


@router.get("/tasks/{task_id}", response_model=TaskResponse, response_model_exclude_none=True,
            responses=ERROR_RESPONSES, summary="A task's state and, once done, its results")
async def get_task(task_id: str, request: Request, key_id: ApiKey, tasks: Tasks) -> TaskResponse:
    return await tasks.get(task_id, key_id, request_id_of(request))


@router.post("/tasks/{task_id}/cancel", response_model=CancelResponse, responses=ERROR_RESPONSES,
             summary="Cancel a task that is still PENDING")
async def cancel_task(task_id: str, request: Request, key_id: ApiKey, tasks: Tasks) -> CancelResponse:
    return await tasks.cancel(task_id, key_id, request_id_of(request))


@router.get("/tasks", response_model=TaskListResponse, response_model_exclude_none=True,
            responses=ERROR_RESPONSES, summary="The caller's tasks of the last 24 hours, newest first")
async def list_tasks(request: Request, key_id: ApiKey, tasks: Tasks,
                     page_no: PageNo = 1, page_size: PageSize = 10,
                     model_name: str | None = None, status: str | None = None, start_time: str | None = None,
                     end_time: str | None = None, api_key_id: str | None = None) -> TaskListResponse:
    return await tasks.list(key_id, request_id_of(request), page_no=page_no, page_size=page_size,
                            model_name=model_name, status=status, start_time=start_time, end_time=end_time,
                            api_key_id=api_key_id)


@router.get("/models", response_model=ModelsResponse, responses=ERROR_RESPONSES, dependencies=[Depends(require_key)],
            summary="The served models, a page at a time, with what each accepts (our extension: capabilities)")
async def list_models(request: Request, page_no: PageNo = 1, page_size: PageSize = 10,
                      model: str | None = None) -> ModelsResponse:
    return models.list_models(request.app.state.registry, request_id_of(request), page_no=page_no,
                              page_size=page_size, model=model)


@router.get("/uploads", response_model=UploadPolicyResponse, responses=ERROR_RESPONSES,
            summary="A signed policy for uploading a temporary file (what the SDK does with local paths)")
async def upload_policy(action: str, model: str, request: Request, key_id: ApiKey,
                        uploads: Uploads) -> UploadPolicyResponse:
    return uploads.policy(action, model, key_id, request_id_of(request))


@router.post("/uploads", response_model=UploadedResponse, responses=ERROR_RESPONSES,
             summary="OSS-style form upload of a temporary file; the signed policy stands in for the API key")
async def upload_file(
    request: Request, uploads: Uploads, file: UploadFile,
    key: Annotated[str, Form(min_length=1)], policy: Annotated[str, Form(min_length=1)],
    signature: Annotated[str, Form(alias="Signature", min_length=1)],
    access_key_id: Annotated[str, Form(alias="OSSAccessKeyId", min_length=1)],
    object_acl: Annotated[str | None, Form(alias="x-oss-object-acl")] = None,
    forbid_overwrite: Annotated[str | None, Form(alias="x-oss-forbid-overwrite")] = None,
) -> UploadedResponse:
    form = UploadForm(key, policy, signature, access_key_id, object_acl, forbid_overwrite)
    return await uploads.upload(form, await file.read(), request_id_of(request))
