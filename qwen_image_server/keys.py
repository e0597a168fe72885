"""API keys in SQLite, stored only as SHA-256 hashes, listed by id and revoked at once.

Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force. A presented key's
hash is compared with every working key's hash in constant time, with no early exit. The table is read on
every check, so a key created or revoked by the CLI takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from qwen_image_server.database import transaction
from qwen_image_server.private_files import private_directory, private_file

KEY_PREFIX = "sk-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    created_at: float
    revoked_at: float | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, database: Path) -> None:
        self.database = database
        private_directory(database.parent)
        private_file(database)
        with transaction(self.database) as connection:
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(api_keys)")}
            if "revoked_at" not in columns:  # databases made before keys could be revoked
                connection.execute("ALTER TABLE api_keys ADD COLUMN revoked_at REAL")

    def create(self, name: str = "default") -> str:
        """Creates a key and returns it; only its hash is kept, so this is the one time it is seen."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with transaction(self.database) as connection:
            connection.execute(
                "INSERT INTO api_keys (id, key_hash, name, created_at) VALUES (?, ?, ?, ?)",
                (secrets.token_hex(8), hash_key(key), name, time.time()),
            )
        return key

    def count(self) -> int:
        """Keys that still work."""
        with transaction(self.database) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])

    def verify(self, key: str) -> str | None:
        """The key's id if ``key`` is a key that was not revoked, else None."""
        presented = hash_key(key)
        with transaction(self.database) as connection:
            rows = connection.execute("SELECT id, key_hash FROM api_keys WHERE revoked_at IS NULL").fetchall()
        match = None
        for key_id, stored in rows:
            if hmac.compare_digest(presented, stored):
                match = key_id
        return match

    def is_active(self, key_id: str) -> bool:
        with transaction(self.database) as connection:
            return connection.execute("SELECT 1 FROM api_keys WHERE id = ? AND revoked_at IS NULL",
                                      (key_id,)).fetchone() is not None

    def list(self) -> list[KeyInfo]:
        with transaction(self.database) as connection:
            rows = connection.execute("SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at")
            return [KeyInfo(*row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        """Stops a key at once; False if no such key works now. The row stays, so the id is never reused."""
        with transaction(self.database, durable=True) as connection:
            return connection.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                      (time.time(), key_id)).rowcount == 1
