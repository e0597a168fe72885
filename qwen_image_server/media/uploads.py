"""Temporary uploads for the SDK's local files (spec §4.5): signed OSS-style POST policies, the stored
bytes, and the ``oss://`` references that name them.

The SDK asks for a policy, POSTs the file to the ``upload_host`` we name (without its API key), then
sends ``oss://<key>`` in the request. So the policy itself carries who asked and for which model,
signed with our secret; the upload endpoint trusts nothing the form says that the signature does not
cover. Files are kept under random names, never under the client's key, and are readable only by the
key that asked for the policy, for the model it named, until they expire (48 h, as hosted).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from qwen_image_server.database import transaction
from qwen_image_server.errors import AccessDenied, InvalidParameter, ServiceError
from qwen_image_server.private_files import private_directory, private_file, read_regular, write_new

OSS_SCHEME = "oss://"
UPLOAD_ROOT = "dashscope-instant"
ACCESS_KEY_ID = "qwen-image-server"
OBJECT_ACL = "private"
FORBID_OVERWRITE = "true"

_FILE_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    file TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL
)
"""


class UploadQuotaExceeded(ServiceError):
    """A key's unexpired uploads would pass its capacity; space frees as they expire."""

    code = "Throttling.AllocationQuota"
    status = 429


class UploadConflict(ServiceError):
    """OSS's answer when ``x-oss-forbid-overwrite`` meets an existing object with other bytes."""

    code = "FileAlreadyExists"
    status = 409


@dataclass(frozen=True)
class UploadGrant:
    """What getPolicy hands out: the policy document (base64), its signature and the folder it allows."""

    policy: str
    signature: str
    upload_dir: str
    expires_in_seconds: int
    max_bytes: int


@dataclass(frozen=True)
class UploadForm:
    """The OSS form fields the SDK posts next to the file."""

    key: str
    policy: str
    signature: str
    access_key_id: str
    object_acl: str | None
    forbid_overwrite: str | None


@dataclass(frozen=True)
class UploadTarget:
    """An authorized upload: the object key and whom the stored file will belong to."""

    key: str
    owner: str
    model: str


@dataclass(frozen=True)
class _Policy:
    upload_dir: str
    owner: str
    model: str
    expires_at: float
    max_bytes: int


class UploadStore:
    def __init__(self, directory: Path, database: Path, secret: bytes, *, ttl_seconds: float,
                 policy_seconds: int, max_bytes: int, capacity_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.database = database
        self.ttl_seconds = ttl_seconds
        self.policy_seconds = policy_seconds
        self.max_bytes = max_bytes
        self.capacity_bytes = capacity_bytes
        self.clock = clock
        # A key of its own, so a policy signature can never pass as a result-URL signature or the reverse.
        self._key = hmac.new(secret, b"qwen-image-server upload policy", hashlib.sha256).digest()
        private_directory(directory)
        private_file(database)
        with transaction(self.database, durable=True) as connection:
            connection.execute(_SCHEMA)

    def grant(self, owner: str, model: str) -> UploadGrant:
        """A policy for one fresh folder, bound to ``owner`` (a key id) and ``model``."""
        now = self.clock()
        owner_tag = hashlib.sha256(owner.encode()).hexdigest()[:32]
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        upload_dir = f"{UPLOAD_ROOT}/{owner_tag}/{day}/{uuid.uuid4()}"
        expires_at = int(now) + self.policy_seconds
        document = {
            "expiration": datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "conditions": [
                ["content-length-range", 0, self.max_bytes],
                ["starts-with", "$key", upload_dir + "/"],
                {"x-oss-object-acl": OBJECT_ACL},
                {"x-oss-forbid-overwrite": FORBID_OVERWRITE},
            ],
            "owner": owner,
            "model": model,
        }
        policy = base64.b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()
        return UploadGrant(policy, self._sign(policy), upload_dir, self.policy_seconds, self.max_bytes)

    def authorize(self, form: UploadForm, size: int) -> UploadTarget:
        """Where an upload of ``size`` bytes may go, once its form passes the signed policy."""
        policy = self._verified_policy(form)
        if size > policy.max_bytes:
            raise InvalidParameter(f"The file is {size} bytes; the policy allows at most {policy.max_bytes}.")
        name = form.key.removeprefix(policy.upload_dir + "/")
        if name == form.key or _FILE_NAME.match(name) is None or name in (".", ".."):
            raise AccessDenied("Invalid according to Policy: the key must be a file name inside upload_dir.")
        if form.object_acl not in (None, OBJECT_ACL) or form.forbid_overwrite not in (None, FORBID_OVERWRITE):
            raise AccessDenied("Invalid according to Policy: x-oss-object-acl or x-oss-forbid-overwrite differs.")
        return UploadTarget(form.key, policy.owner, policy.model)

    def store(self, target: UploadTarget, data: bytes) -> str:
        """Writes the bytes durably, then records them; returns the ``oss://`` reference.

        The same key with other bytes is refused, as OSS does under ``x-oss-forbid-overwrite`` (the SDK
        names the local files of one call by basename alone); the same bytes again are accepted. The
        owner's unexpired uploads must stay within ``capacity_bytes``, checked in the inserting transaction.
        """
        digest = hashlib.sha256(data).hexdigest()
        file = uuid.uuid4().hex
        path = self.directory / file
        write_new(path, data, sync=True)
        recorded = False
        try:
            recorded = self._record(target, file, digest, len(data))
        finally:
            if not recorded:
                path.unlink(missing_ok=True)
        return OSS_SCHEME + target.key

    def _record(self, target: UploadTarget, file: str, digest: str, size: int) -> bool:
        """Records a stored file; False when the same bytes were already stored under this key."""
        now = self.clock()
        with transaction(self.database, durable=True) as connection:
            connection.execute("BEGIN IMMEDIATE")
            existing = connection.execute("SELECT digest FROM uploads WHERE key = ?", (target.key,)).fetchone()
            if existing is not None:
                if existing[0] == digest:
                    return False
                raise UploadConflict(f"The object {target.key} already exists with other content: two local "
                                     f"files with the same name cannot be uploaded in one call.")
            used = connection.execute("SELECT COALESCE(SUM(size), 0) FROM uploads WHERE owner = ? AND created_at >= ?",
                                      (target.owner, now - self.ttl_seconds)).fetchone()[0]
            if used + size > self.capacity_bytes:
                raise UploadQuotaExceeded(f"This key's temporary files would exceed {self.capacity_bytes} bytes; "
                                          f"space frees as uploads expire ({self.ttl_seconds / 3600:g} h).")
            connection.execute(
                "INSERT INTO uploads (key, owner, model, file, digest, size, created_at) VALUES (?,?,?,?,?,?,?)",
                (target.key, target.owner, target.model, file, digest, size, now))
        return True

    def resolve(self, reference: str, owner: str, model: str) -> bytes:
        """The bytes behind ``oss://<key>``, for the key and model that uploaded them, until they expire."""
        key = reference.removeprefix(OSS_SCHEME)
        with transaction(self.database) as connection:
            row = connection.execute("SELECT owner, model, file, created_at FROM uploads WHERE key = ?",
                                     (key,)).fetchone()
        missing = InvalidParameter(
            f"The temporary file {reference} does not exist or has expired. Uploaded files can be read for "
            f"{self.ttl_seconds / 3600:g} hours, only with the API key that uploaded them.")
        if row is None or not hmac.compare_digest(row[0], owner) or row[3] + self.ttl_seconds < self.clock():
            raise missing
        if row[1] != model:
            raise InvalidParameter(f"The temporary file {reference} was uploaded for model {row[1]}; "
                                   f"it cannot be used with {model}.")
        try:
            return read_regular(self.directory / row[2])
        except FileNotFoundError:
            raise missing from None

    def remove_expired(self) -> int:
        """Deletes expired uploads, rows first so nothing can resolve to a file being removed."""
        cutoff = self.clock() - self.ttl_seconds
        with transaction(self.database, durable=True) as connection:
            files = [row[0] for row in connection.execute("SELECT file FROM uploads WHERE created_at < ?",
                                                          (cutoff,))]
            connection.execute("DELETE FROM uploads WHERE created_at < ?", (cutoff,))
        for file in files:
            (self.directory / file).unlink(missing_ok=True)
        return len(files)

    def _sign(self, policy: str) -> str:
        return base64.b64encode(hmac.new(self._key, policy.encode(), hashlib.sha256).digest()).decode()

    def _verified_policy(self, form: UploadForm) -> _Policy:
        if form.access_key_id != ACCESS_KEY_ID or not hmac.compare_digest(self._sign(form.policy), form.signature):
            raise AccessDenied("The request signature we calculated does not match the signature you provided.")
        try:
            document = json.loads(base64.b64decode(form.policy, validate=True))
            expires_at = datetime.strptime(document["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            conditions = document["conditions"]
            upload_dir = next(c[2] for c in conditions if isinstance(c, list) and c[:2] == ["starts-with", "$key"])
            max_bytes = next(c[2] for c in conditions if isinstance(c, list) and c[0] == "content-length-range")
            policy = _Policy(upload_dir.rstrip("/"), document["owner"], document["model"],
                             expires_at.timestamp(), int(max_bytes))
        except (binascii.Error, ValueError, KeyError, TypeError, IndexError, StopIteration) as exc:
            raise AccessDenied("Invalid according to Policy: the policy could not be read.") from exc
        if policy.expires_at < self.clock():
            raise AccessDenied("Invalid according to Policy: Policy expired.")
        return policy
