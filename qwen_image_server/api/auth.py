"""``Authorization: Bearer <key>`` as the hosted API; one answer for missing, empty, wrong and revoked keys.

The front door (``api/frontdoor.py``) checks the key of every route that depends on ``require_key`` before
the body is read; the dependency then only hands the route the key id it found.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from qwen_image_server.errors import InvalidApiKey
from qwen_image_server.keys import KeyStore


def authenticate(keys: KeyStore, authorization: bytes) -> str:
    """The key id of an ``Authorization`` header's bearer token; raises ``InvalidApiKey`` otherwise."""
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    key_id = keys.verify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
    if key_id is None:
        raise InvalidApiKey()
    return key_id


def require_key(request: Request) -> str:
    """The calling key's id, as the front door found it; failing closed should it ever not have looked."""
    key_id = getattr(request.state, "key_id", None)
    if key_id is None:
        raise InvalidApiKey()
    return str(key_id)


ApiKey = Annotated[str, Depends(require_key)]
