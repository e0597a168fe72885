"""Every error leaves the server here, in the hosted API's shape: ``{request_id, code, message}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from qwen_image_server.errors import ServiceError

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "NotFound", 405: "MethodNotAllowed", 413: "BadRequest.TooLarge"}


def error_response(request_id: str, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"request_id": request_id, "code": code, "message": message}
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id, **(headers or {})})


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def _answer(request: Request, status: int, code: str, message: str,
            headers: dict[str, str] | None = None) -> JSONResponse:
    request.state.error_code = code  # for the request metrics
    return error_response(request_id_of(request), status, code, message, headers)


async def _service_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceError)
    return _answer(request, error.status, error.code, error.message, error.headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if any(problem.get("type") == "json_invalid" for problem in problems):
        message = "Required body invalid, please check the request body format."
    else:
        message = "; ".join(_describe(problem) for problem in problems[:5])
    return _answer(request, 400, "InvalidParameter", message)


def _describe(problem: dict) -> str:
    location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
    return f"{location}: {problem.get('msg', 'invalid')}" if location else str(problem.get("msg"))


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    code = _HTTP_CODES.get(error.status_code, "InvalidParameter")
    return _answer(request, error.status_code, code, str(error.detail), dict(error.headers or {}))


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error in request %s", request_id_of(request), exc_info=error)
    return _answer(request, 500, "InternalError", "An internal error has occurred, please try again later.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
