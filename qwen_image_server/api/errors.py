"""Every error leaves the server here, in the shape of the API surface its path belongs to.

DashScope paths answer the hosted API's ``{request_id, code, message}``; OpenAI paths (``/v1/...``) answer
OpenAI's ``{"error": {message, type, param, code}}``, with our error codes in ``code`` except where OpenAI
has a code of its own that its clients test for (``model_not_found``).
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from qwen_image_server.api import streaming
from qwen_image_server.errors import ServiceError

log = logging.getLogger(__name__)

STREAMING_ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"  # the sync endpoint that streams
_HTTP_CODES = {404: "NotFound", 405: "MethodNotAllowed", 413: "BadRequest.TooLarge"}

# OpenAI's images API, also under Alibaba's OpenAI-compatible base path
OPENAI_PREFIXES = ("/v1/", "/compatible-mode/v1/")
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 429: "rate_limit_error"}
_OPENAI_CODES = {"ModelNotFound": "model_not_found"}


def error_response(request_id: str, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   path: str = "", param: str | None = None) -> JSONResponse:
    """The error JSON for a request to ``path``; ``param`` (the parameter at fault) only OpenAI's shape carries."""
    body: dict[str, object]
    if path.startswith(OPENAI_PREFIXES):
        body = {"error": {"message": message, "type": openai_error_type(status), "param": param,
                          "code": _OPENAI_CODES.get(code, code)}}
    else:
        body = {"request_id": request_id, "code": code, "message": message}
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id, **(headers or {})})


def openai_error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _OPENAI_TYPES.get(status, "invalid_request_error")


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def _answer(request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None,
            param: str | None = None) -> Response:
    request.state.error_code = code  # for the request metrics
    request_id = request_id_of(request)
    if request.url.path == STREAMING_ROUTE and streaming.wants_events(request):  # errors come as events there
        payload = {"request_id": request_id, "code": code, "message": message}
        return Response(streaming.dashscope_event("error", status, payload), media_type=streaming.MEDIA_TYPE,
                        headers={"x-request-id": request_id, **streaming.HEADERS})
    return error_response(request_id, status, code, message, headers, request.url.path, param)


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    return _answer(request, error.status, error.code, error.message, error.headers, error.param)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    invalid = next((problem for problem in problems if problem.get("type") == "json_invalid"), None)
    if invalid is not None:
        return _answer(request, 400, "InvalidParameter", "Required body invalid, please check the request body "
                                                         f"format: {_json_problem(str(invalid.get('msg', '')))}")
    message = "; ".join(_describe(problem) for problem in problems[:5])
    return _answer(request, 400, "InvalidParameter", message, param=_location(problems[0]) if problems else None)


def _json_problem(message: str) -> str:
    """pydantic's words for malformed JSON; a lone surrogate escape (``"\\ud800"``) reads as a bad hex escape."""
    if "hex escape" in message or "surrogate" in message:
        return "a string is not valid Unicode text (a lone surrogate escape)."
    return message.removeprefix("Invalid JSON: ") + "."


def _location(problem: dict) -> str | None:
    return ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or None


def _describe(problem: dict) -> str:
    location = _location(problem)
    return f"{location}: {problem.get('msg', 'invalid')}" if location else str(problem.get("msg"))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "InvalidParameter")
    headers = dict(error.headers or {})
    if error.status_code == 405 and (methods := allowed_methods(request)):
        headers["Allow"] = ", ".join(methods)
    return _answer(request, error.status_code, code, str(error.detail), headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods the schema documents at this path. Starlette's ``Allow`` names only the first matching
    route's, and one path (``/api/v1/uploads``) has a GET route and a POST route."""
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^/}]+\})", template))
        if re.fullmatch(pattern, request.url.path):
            methods = {method.upper() for method in operations}
            return sorted(methods | {"HEAD"} if "GET" in methods else methods)
    return []


async def _unexpected_error(request: Request, error: Exception) -> Response:
    log.exception("unhandled error in request %s", request_id_of(request), exc_info=error)
    return _answer(request, 500, "InternalError", "An internal error has occurred, please try again later.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
