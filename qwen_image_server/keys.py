"""API keys in SQLite, stored only as SHA-256 hashes and compared in constant time.

Keys are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force.
The table is read on every check, so a key created by the CLI works without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path

from qwen_image_server.database import transaction

KEY_PREFIX = "sk-"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, database: Path) -> None:
        self.database = database
        database.parent.mkdir(parents=True, exist_ok=True)
        with transaction(self.database) as connection:
            connection.execute(_SCHEMA)

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
        with transaction(self.database) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    def verify(self, key: str) -> str | None:
        """The key's id if ``key`` is valid, else None. Every stored hash is compared, in constant time."""
        presented = hash_key(key)
        with transaction(self.database) as connection:
            rows = connection.execute("SELECT id, key_hash FROM api_keys").fetchall()
        match = None
        for key_id, stored in rows:
            if hmac.compare_digest(presented, stored):
                match = key_id
        return match
