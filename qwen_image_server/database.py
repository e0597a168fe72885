"""A short-lived SQLite connection per operation, for the small stores that share ``server.db`` (API keys,
uploads). The task store keeps per-thread connections of its own, for its hot path."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def transaction(database: Path, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection whose block commits on success and rolls back on error; closed afterwards.

    ``durable`` syncs each commit to disk (``synchronous=FULL``), for what a client is told is stored.
    """
    connection = sqlite3.connect(database, timeout=10)
    try:
        if durable:
            connection.execute("PRAGMA synchronous=FULL")
        with connection:
            yield connection
    finally:
        connection.close()
