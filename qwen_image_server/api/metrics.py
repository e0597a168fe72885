"""``/metrics`` for Prometheus, and the middleware that counts every request by route, status and error code."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.metrics import Metrics

router = APIRouter(tags=["Health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={
    200: {"description": "The text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# Any other method, however spelt, is counted as OTHER: a client must not be able to mint label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


class RequestMetricsMiddleware:
    """Labels by route template (``/api/v1/tasks/{task_id}``), never the raw path, and by a fixed set of
    methods and our own error codes, so the number of series stays bounded whatever clients send."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(
                route=getattr(route, "path", "unmatched"), method=method_label(scope["method"]), status=str(status),
                code=scope.get("state", {}).get("error_code", ""),
            ).inc()
