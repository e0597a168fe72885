"""The front door: what every HTTP request passes before the app sees it.

- Every request gets an id, sent back as ``X-Request-Id``.
- An API path with a trailing slash is the path without it (older SDKs poll ``/api/v1/tasks/{id}/``): it
  is answered directly, never redirected. A redirect costs a round trip and, behind a TLS proxy whose
  headers are not trusted, points at ``http://``, where ``requests`` drops the ``Authorization`` header.
- Every path of the APIs (``KEYED_PREFIXES``) needs an API key, but for the few that carry their own proof
  (``KEYLESS``). The key is checked from the headers alone, before a byte of the body is read, and the
  key's request rate counted, for every request it makes, valid or not: a client without a key costs a
  header parse and one indexed lookup, never a buffered body.
- The body of a keyed request, or of a keyless one that takes a body, is read within its size cap, at a
  minimum rate after a grace period, out of a budget of buffered bytes shared by every request in flight.
  A refusal that leaves a body unread closes the connection, so the rest of it is never read either.
  Other requests (pages, health, results) take no body, and theirs is never read.

It reads the body before the app does because a limit enforced later, inside body parsing, would surface
as a generic parse error instead of a 413 or a 408.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qwen_image_server.api.auth import authenticate
from qwen_image_server.api.errors import error_response
from qwen_image_server.api.limits import RateLimiter
from qwen_image_server.errors import PayloadTooLarge, RequestTimeout, ServiceError, Throttling
from qwen_image_server.keys import KeyStore

KEYED_PREFIXES = ("/api/", "/v1/", "/compatible-mode/")
# Keyless on purpose: the SDK posts its upload form without the API key; the signed policy is its proof.
KEYLESS = frozenset({("POST", "/api/v1/uploads")})


def needs_key(method: str, path: str) -> bool:
    return path.startswith(KEYED_PREFIXES) and (method, path) not in KEYLESS


def without_trailing_slash(scope: Scope) -> str:
    """The request's path, with the trailing slashes of an API path removed from the scope."""
    path: str = scope["path"]
    if path.startswith(KEYED_PREFIXES) and path.endswith("/"):
        path = scope["path"] = path.rstrip("/")
        if scope.get("raw_path"):
            scope["raw_path"] = scope["raw_path"].rstrip(b"/")
    return path


def takes_body(method: str, path: str) -> bool:
    return needs_key(method, path) or (method, path) in KEYLESS


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    grace_seconds: float
    min_bytes_per_second: int
    budget_bytes: int  # bodies held by all requests in flight together
    max_bytes_by_path: dict[str, int] = field(default_factory=dict)

    def cap_for(self, path: str) -> int:
        return self.max_bytes_by_path.get(path, self.max_bytes)


class BodyBudget:
    """Bytes of request bodies held at once, across requests; taken as they arrive, given back at the end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise Throttling(1, "The server is receiving too many request bodies at once; retry shortly.")
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class FrontDoor:
    def __init__(self, app: ASGIApp, keys: KeyStore, rate_limiter: RateLimiter, limits: BodyLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.keys = keys
        self.rate_limiter = rate_limiter
        self.limits = limits
        self.clock = clock
        self.budget = BodyBudget(limits.budget_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        send = with_request_id(send, request_id)
        method, path = scope["method"], without_trailing_slash(scope)
        if not takes_body(method, path):
            await self.app(scope, receive, send)
            return
        held = [0]
        try:
            if needs_key(method, path):
                state["key_id"] = authenticate(self.keys, dict(scope["headers"]).get(b"authorization", b""))
                self.rate_limiter.hit_key(state["key_id"])
            body = await self.read_body(scope, receive, held)
            if body is not None:
                await self.app(scope, replay(body, receive), send)
        except ServiceError as error:
            state["error_code"] = error.code
            headers = {**error.headers, "Connection": "close"} if has_unread_body(scope, held[0]) else error.headers
            response = error_response(request_id, error.status, error.code, error.message, headers, scope["path"])
            await response(scope, receive, send)
        finally:
            self.budget.give_back(held[0])

    async def read_body(self, scope: Scope, receive: Receive, held: list[int]) -> bytes | None:
        """The whole body, or None if the client left; ``held[0]`` counts the budget taken for it."""
        cap = self.limits.cap_for(scope["path"])
        declared = declared_length(scope)
        if declared is not None and declared > cap:
            raise PayloadTooLarge(f"Payload Too Large: the body limit is {cap} bytes.")
        chunks: list[bytes] = []
        started = self.clock()
        while True:
            allowed = started + self.limits.grace_seconds + held[0] / self.limits.min_bytes_per_second
            try:
                async with asyncio.timeout(max(0.0, allowed - self.clock())):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(f"The request body arrived too slowly: after "
                                     f"{self.limits.grace_seconds:g} s it must arrive at "
                                     f"{self.limits.min_bytes_per_second} bytes per second or more.") from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if held[0] + len(chunk) > cap:
                raise PayloadTooLarge(f"Payload Too Large: the body limit is {cap} bytes.")
            self.budget.take(len(chunk))
            held[0] += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def declared_length(scope: Scope) -> int | None:
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return int(declared) if declared.isdigit() else None


def has_unread_body(scope: Scope, read: int) -> bool:
    headers = dict(scope["headers"])
    return b"transfer-encoding" in headers or (declared_length(scope) or 0) > read


def with_request_id(send: Send, request_id: str) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
        await send(message)

    return send_with_id


def replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
