"""The SDK's local-file upload (spec §4.5): hand out a signed policy, then take the OSS-style form POST.

Uploaded bytes pass the same image checks as any other input before they are kept, so a temporary
file that is stored is one a request can use; the signature is checked first, so unsigned bytes are
never decoded. A policy works only while the key that asked for it does: revoking the key stops its
policies at once (and its uploads, which only it can read).
"""

from __future__ import annotations

import asyncio
import math

from qwen_image_server.api.dashscope.protocol import UploadedResponse, UploadPolicy, UploadPolicyResponse
from qwen_image_server.engine.registry import ModelRegistry
from qwen_image_server.errors import AccessDenied, InvalidParameter
from qwen_image_server.keys import KeyStore
from qwen_image_server.media.images import ImageLimits, decode_image
from qwen_image_server.media.uploads import (
    ACCESS_KEY_ID,
    FORBID_OVERWRITE,
    OBJECT_ACL,
    UploadForm,
    UploadStore,
)
from qwen_image_server.settings import MiB

UPLOADS_ROUTE = "/api/v1/uploads"


class UploadService:
    def __init__(self, store: UploadStore, keys: KeyStore, registry: ModelRegistry, limits: ImageLimits,
                 base_url: str) -> None:
        self.store = store
        self.keys = keys
        self.registry = registry
        self.limits = limits
        self.upload_host = base_url + UPLOADS_ROUTE

    def policy(self, action: str, model: str, key_id: str, request_id: str) -> UploadPolicyResponse:
        if action != "getPolicy":
            raise InvalidParameter(f"Unsupported action {action!r}; the only action is getPolicy.")
        spec = self.registry.get(model)
        grant = self.store.grant(key_id, spec.name)
        size_mb = max(1, math.floor(grant.max_bytes / MiB))
        return UploadPolicyResponse(request_id=request_id, data=UploadPolicy(
            policy=grant.policy, signature=grant.signature, upload_dir=grant.upload_dir,
            upload_host=self.upload_host, expire_in_seconds=grant.expires_in_seconds,
            max_file_size_mb=size_mb, capacity_limit_mb=max(1, math.floor(self.store.capacity_bytes / MiB)),
            oss_access_key_id=ACCESS_KEY_ID,
            x_oss_object_acl=OBJECT_ACL, x_oss_forbid_overwrite=FORBID_OVERWRITE))

    async def upload(self, form: UploadForm, data: bytes, request_id: str) -> UploadedResponse:
        target = self.store.authorize(form, len(data))
        if not self.keys.is_active(target.owner):
            raise AccessDenied("The API key this upload policy was issued to has been revoked.")
        await asyncio.to_thread(decode_image, data, self.limits)
        reference = await asyncio.to_thread(self.store.store, target, data)
        return UploadedResponse(url=reference, request_id=request_id)
