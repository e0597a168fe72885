"""``Authorization: Bearer <key>`` as the hosted API; one answer for missing, empty and wrong keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qwen_image_server.errors import InvalidApiKey
from qwen_image_server.keys import KeyStore


def require_key(request: Request) -> str:
    """The calling key's id; raises ``InvalidApiKey`` otherwise."""
    keys: KeyStore = request.app.state.keys
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    key_id = keys.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if key_id is None:
        raise InvalidApiKey()
    return key_id


ApiKey = Annotated[str, Depends(require_key)]
