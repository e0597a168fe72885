"""Server-sent events for the sync endpoints, for clients that ask for a stream.

A request runs as it would otherwise; while it waits, comment lines (``: waiting``) keep proxies from
timing out the stream, and every SSE parser skips them. The answer then comes as one event:

- DashScope's framing, as captured from the hosted service: ``id:``, ``event:result``, a
  ``:HTTP_STATUS/200`` comment and ``data:`` with the body the JSON answer would have had. An error is
  ``event:error`` with ``:HTTP_STATUS/<status>`` and the error JSON, on an HTTP 200 stream, as hosted; we add
  a ``status:<status>`` line, which the dashscope SDK reads as the response's status code (it assumes 400
  otherwise) and other SSE parsers ignore as an unknown field.
- OpenAI's image events (``image_generation.completed`` / ``image_edit.completed``), one per image.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from qwen_image_server.errors import ServiceError

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
HEARTBEAT_SECONDS = 5.0
HEARTBEAT = b": waiting\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Each event's data is a JSON object: the answer or the error the plain JSON response would carry.
DOCUMENTED = {MEDIA_TYPE: {"schema": {"type": "object"},
                           "description": "With X-DashScope-SSE: enable or Accept: text/event-stream"}}


def wants_events(request: Request) -> bool:
    """``X-DashScope-SSE: enable`` (what the SDK's ``stream=True`` sends) or ``Accept: text/event-stream``."""
    return (request.headers.get("x-dashscope-sse", "").strip().lower() == "enable"
            or MEDIA_TYPE in request.headers.get("accept", "").lower())


def dashscope_event(kind: str, status: int, payload: dict[str, Any]) -> bytes:
    lines = ["id:1", f"event:{kind}", f":HTTP_STATUS/{status}"]
    if kind == "error":
        lines.append(f"status:{status}")
    lines.append("data:" + json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


def openai_event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {kind}\ndata: {data}\n\n".encode()


async def _events(answer: Awaitable[Any], to_events: Callable[[Any], list[bytes]],
                  error_event: Callable[[ServiceError], bytes]) -> AsyncIterator[bytes]:
    pending = asyncio.ensure_future(answer)
    try:
        while not (await asyncio.wait({pending}, timeout=HEARTBEAT_SECONDS))[0]:
            yield HEARTBEAT
        try:
            events = to_events(pending.result())
        except ServiceError as error:
            events = [error_event(error)]
        except Exception:
            log.exception("a streamed request failed")
            events = [error_event(ServiceError())]
        for event in events:
            yield event
    finally:
        # If the client left first, the request goes on alone and notices the disconnect itself, as a sync
        # request does (a PENDING task is canceled, a RUNNING one finishes and stays retrievable).
        pending.add_done_callback(_consume)


def _consume(done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.debug("a streamed request ended after its client left: %s", done.exception())


def dashscope_stream(answer: Awaitable[Any], request_id: str) -> StreamingResponse:
    """``answer`` resolves to the response model the JSON answer would carry, or raises ``ServiceError``."""

    def error_event(error: ServiceError) -> bytes:
        return dashscope_event("error", error.status, {"request_id": request_id, "code": error.code,
                                                        "message": error.message})

    events = _events(answer, lambda body: [dashscope_event("result", 200, body.model_dump(exclude_none=True))],
                     error_event)
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)


def openai_stream(answer: Awaitable[Any], kind: str) -> StreamingResponse:
    """``answer`` resolves to a list of ``image_*.completed`` payloads; ``kind`` is ``image_generation`` or
    ``image_edit``. Errors are an ``error`` event with OpenAI's error object."""

    def error_event(error: ServiceError) -> bytes:
        return openai_event("error", {"error": {"message": error.message, "type": "invalid_request_error"
                                                if error.status < 500 else "server_error",
                                                "param": error.param, "code": error.code}})

    events = _events(answer, lambda payloads: [openai_event(f"{kind}.completed", payload) for payload in payloads],
                     error_event)
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=HEADERS)
