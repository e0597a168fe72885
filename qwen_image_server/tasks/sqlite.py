"""The task store on SQLite in WAL mode: crash-safe on one machine, with no server to run.

Writes take the database's write lock up front (``BEGIN IMMEDIATE``), so a claim's read and update are one
atomic step even with several workers or processes, and a task's admission checks its quota in the same
transaction that inserts it. ``synchronous=FULL`` makes an acknowledged task survive power loss as well
as ``kill -9``.

Claims are fair across keys: the next task is the oldest of the key that was served least recently
(``key_turns`` numbers each key's latest claim), and a batch is filled round-robin across keys, so one
key's flood waits behind every other key's next task instead of running first.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qwen_image_server.private_files import private_directory, private_file
from qwen_image_server.tasks.models import (
    NewTask,
    Quota,
    Refusal,
    TaskFailure,
    TaskFilter,
    TaskListing,
    TaskMode,
    TaskPage,
    TaskRecord,
    TaskState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    parameters TEXT NOT NULL,
    batch_key TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    progress_step INTEGER,
    progress_total INTEGER,
    outputs TEXT NOT NULL DEFAULT '[]',
    actual_prompt TEXT,
    error_code TEXT,
    error_status INTEGER,
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, submitted_at);
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (key_id, submitted_at);
CREATE TABLE IF NOT EXISTS task_inputs (
    task_id TEXT NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (task_id, position)
);
CREATE TABLE IF NOT EXISTS key_turns (
    key_id TEXT PRIMARY KEY,
    turn INTEGER NOT NULL
);
"""
# Columns added after the first release, with their definitions: added to older databases at start.
_ADDED_COLUMNS = {"cost": "REAL NOT NULL DEFAULT 0", "output_bytes": "INTEGER NOT NULL DEFAULT 0"}

_COLUMNS = ("task_id, key_id, request_id, mode, model, state, parameters, batch_key, attempt, submitted_at, "
            "started_at, finished_at, progress_step, progress_total, outputs, actual_prompt, error_code, "
            "error_status, error_message")


class SqliteTaskStore:
    def __init__(self, database: Path, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock
        self._local = threading.local()
        private_directory(database.parent)
        private_file(database)
        connection = self._connection()
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(_SCHEMA)
        present = {row[1] for row in connection.execute("PRAGMA table_info(tasks)")}
        for column, definition in _ADDED_COLUMNS.items():
            if column not in present:
                connection.execute(f"ALTER TABLE tasks ADD COLUMN {column} {definition}")

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread: sqlite3 connections must not be shared between threads."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.database, timeout=30, isolation_level=None)
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            self._local.connection = connection
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def create(self, task: NewTask, quota: Quota) -> Refusal | None:
        with self._write() as db:
            refusal = self.refusal(task.key_id, task.cost, quota)  # this thread's connection: inside the lock
            if refusal is not None:
                return refusal
            db.execute(
                "INSERT INTO tasks (task_id, key_id, request_id, mode, model, state, parameters, batch_key, "
                "submitted_at, cost) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task.task_id, task.key_id, task.request_id, task.mode, task.job.model, TaskState.PENDING,
                 json.dumps(task.job.parameters()), task.batch_key, self.clock(), task.cost),
            )
            db.executemany("INSERT INTO task_inputs (task_id, position, data) VALUES (?, ?, ?)",
                           [(task.task_id, position, data) for position, data in enumerate(task.inputs)])
        return None

    def refusal(self, key_id: str, cost: float, quota: Quota) -> Refusal | None:
        db = self._connection()
        if self.count_pending() >= quota.max_pending:
            return Refusal.QUEUE_FULL
        pending, in_flight = db.execute(
            "SELECT COUNT(*) FILTER (WHERE state = ?), COALESCE(SUM(cost), 0) FROM tasks "
            "WHERE key_id = ? AND state IN (?, ?)",
            (TaskState.PENDING, key_id, TaskState.PENDING, TaskState.RUNNING)).fetchone()
        if quota.max_pending_per_key is not None and pending >= quota.max_pending_per_key:
            return Refusal.KEY_SHARE
        # A key with nothing in flight may always run one task, however large: the budget bounds a
        # key's share of the machine, not the size of a request the model rules allow.
        if quota.max_cost_per_key is not None and in_flight > 0 and in_flight + cost > quota.max_cost_per_key:
            return Refusal.KEY_COST
        if quota.max_result_bytes_per_key is not None:
            stored = db.execute("SELECT COALESCE(SUM(output_bytes), 0) FROM tasks WHERE key_id = ? AND state = ?",
                                (key_id, TaskState.SUCCEEDED)).fetchone()[0]
            if stored >= quota.max_result_bytes_per_key:
                return Refusal.KEY_RESULTS
        return None

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._connection().execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _record(row) if row else None

    def inputs(self, task_id: str) -> list[bytes]:
        rows = self._connection().execute(
            "SELECT data FROM task_inputs WHERE task_id = ? ORDER BY position", (task_id,)).fetchall()
        return [bytes(row[0]) for row in rows]

    def claim(self, worker: str, lease_seconds: float, max_batch: int) -> list[TaskRecord]:
        with self._write() as db:
            first = db.execute(
                "SELECT t.task_id, t.batch_key, t.key_id FROM tasks t LEFT JOIN key_turns k ON k.key_id = t.key_id "
                "WHERE t.state = ? ORDER BY COALESCE(k.turn, 0), t.submitted_at, t.rowid LIMIT 1",
                (TaskState.PENDING,)).fetchone()
            if first is None:
                return []
            claimed = [(first[0], first[2])]
            if first[1] is not None and max_batch > 1:
                claimed += db.execute(
                    "SELECT c.task_id, c.key_id FROM (SELECT task_id, key_id, submitted_at, rowid AS position, "
                    "ROW_NUMBER() OVER (PARTITION BY key_id ORDER BY submitted_at, rowid) AS place FROM tasks "
                    "WHERE state = ? AND batch_key = ? AND task_id != ?) c "
                    "LEFT JOIN key_turns k ON k.key_id = c.key_id "
                    "ORDER BY c.place, c.key_id = ?, COALESCE(k.turn, 0), c.submitted_at, c.position LIMIT ?",
                    (TaskState.PENDING, first[1], first[0], first[2], max_batch - 1)).fetchall()
            task_ids = [task_id for task_id, _key in claimed]
            self._take_turns(db, [key for _task, key in claimed])
            now = self.clock()
            marks = ",".join("?" * len(task_ids))
            db.execute(
                f"UPDATE tasks SET state = ?, worker = ?, lease_until = ?, attempt = attempt + 1, started_at = ?, "
                f"progress_step = NULL, progress_total = NULL WHERE task_id IN ({marks})",
                (TaskState.RUNNING, worker, now + lease_seconds, now, *task_ids))
            rows = db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id IN ({marks})", task_ids).fetchall()
        by_id = {row[0]: _record(row) for row in rows}
        return [by_id[task_id] for task_id in task_ids]

    @staticmethod
    def _take_turns(db: sqlite3.Connection, keys: list[str]) -> None:
        """Numbers the claimed keys' turns after every earlier one, in claim order."""
        latest = db.execute("SELECT COALESCE(MAX(turn), 0) FROM key_turns").fetchone()[0]
        db.executemany("INSERT INTO key_turns (key_id, turn) VALUES (?, ?) "
                       "ON CONFLICT (key_id) DO UPDATE SET turn = excluded.turn",
                       [(key, latest + index) for index, key in enumerate(dict.fromkeys(keys), start=1)])

    def heartbeat(self, task_ids: list[str], worker: str, lease_seconds: float) -> None:
        self._update_owned(task_ids, worker, "lease_until = ?", (self.clock() + lease_seconds,))

    def progress(self, task_ids: list[str], worker: str, step: int, total: int) -> None:
        self._update_owned(task_ids, worker, "progress_step = ?, progress_total = ?", (step, total))

    def _update_owned(self, task_ids: list[str], worker: str, assignments: str, values: tuple[Any, ...]) -> int:
        marks = ",".join("?" * len(task_ids))
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE tasks SET {assignments} WHERE task_id IN ({marks}) AND state = ? AND worker = ?",
                (*values, *task_ids, TaskState.RUNNING, worker))
            return cursor.rowcount

    def succeed(self, task_id: str, worker: str, outputs: list[str], actual_prompt: str | None,
                output_bytes: int = 0) -> bool:
        return self._finish(task_id, worker, "outputs = ?, actual_prompt = ?, output_bytes = ?",
                            (TaskState.SUCCEEDED, json.dumps(outputs), actual_prompt, output_bytes))

    def fail(self, task_id: str, worker: str, failure: TaskFailure) -> bool:
        return self._finish(task_id, worker, "error_code = ?, error_status = ?, error_message = ?",
                            (TaskState.FAILED, failure.code, failure.status, failure.message))

    def _finish(self, task_id: str, worker: str, assignments: str, values: tuple[Any, ...]) -> bool:
        """Ends a task ``worker`` still owns and drops its inputs; False if it lost the lease meanwhile."""
        state, *rest = values
        with self._write() as db:
            finished = db.execute(
                f"UPDATE tasks SET state = ?, finished_at = ?, lease_until = NULL, {assignments} "
                "WHERE task_id = ? AND state = ? AND worker = ?",
                (state, self.clock(), *rest, task_id, TaskState.RUNNING, worker)).rowcount == 1
            if finished:
                db.execute("DELETE FROM task_inputs WHERE task_id = ?", (task_id,))
        return finished

    def release(self, task_ids: list[str], worker: str) -> None:
        if task_ids:
            self._update_owned(task_ids, worker, "state = ?, worker = NULL, lease_until = NULL, "
                               "attempt = attempt - 1, started_at = NULL, progress_step = NULL, progress_total = NULL",
                               (TaskState.PENDING,))

    def cancel(self, task_id: str, key_id: str) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tasks SET state = ?, finished_at = ? WHERE task_id = ? AND key_id = ? AND state = ?",
                (TaskState.CANCELED, self.clock(), task_id, key_id, TaskState.PENDING))
            if cursor.rowcount:
                db.execute("DELETE FROM task_inputs WHERE task_id = ?", (task_id,))
            return cursor.rowcount == 1

    def reap(self, max_attempts: int) -> tuple[int, int]:
        now = self.clock()
        with self._write() as db:
            given_up = [row[0] for row in db.execute(
                "SELECT task_id FROM tasks WHERE state = ? AND lease_until < ? AND attempt >= ?",
                (TaskState.RUNNING, now, max_attempts))]
            marks = ",".join("?" * len(given_up))
            failed = db.execute(
                f"UPDATE tasks SET state = ?, finished_at = ?, lease_until = NULL, worker = NULL, error_code = ?, "
                f"error_status = ?, error_message = ? WHERE task_id IN ({marks})",
                (TaskState.FAILED, now, "InternalError", 500,
                 f"The task was interrupted {max_attempts} times (its worker stopped responding) and was given up.",
                 *given_up)).rowcount
            db.execute(f"DELETE FROM task_inputs WHERE task_id IN ({marks})", given_up)
            requeued = db.execute(
                "UPDATE tasks SET state = ?, worker = NULL, lease_until = NULL, progress_step = NULL, "
                "progress_total = NULL WHERE state = ? AND lease_until < ?",
                (TaskState.PENDING, TaskState.RUNNING, now)).rowcount
        return requeued, failed

    def list_tasks(self, query: TaskFilter) -> TaskPage:
        conditions, values = ["key_id = ?"], list[Any]([query.key_id])
        for condition, value in (("model = ?", query.model), ("state = ?", query.state),
                                 ("submitted_at >= ?", query.submitted_from),
                                 ("submitted_at <= ?", query.submitted_to)):
            if value is not None:
                conditions.append(condition)
                values.append(value)
        where = " AND ".join(conditions)
        db = self._connection()
        total = db.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}", values).fetchone()[0]
        rows = db.execute(
            f"SELECT task_id, key_id, request_id, model, state, submitted_at, started_at, finished_at FROM tasks "
            f"WHERE {where} ORDER BY submitted_at DESC, rowid DESC LIMIT ? OFFSET ?",
            (*values, query.page_size, (query.page_no - 1) * query.page_size)).fetchall()
        return TaskPage(total=total, rows=[TaskListing(task_id, key_id, request_id, model, TaskState(state),
                                                       submitted_at, started_at, finished_at)
                                           for task_id, key_id, request_id, model, state, submitted_at, started_at,
                                           finished_at in rows])

    def count_pending(self) -> int:
        return int(self._connection().execute(
            "SELECT COUNT(*) FROM tasks WHERE state = ?", (TaskState.PENDING,)).fetchone()[0])

    def count_active(self, key_id: str, models: list[str], mode: TaskMode) -> int:
        marks = ",".join("?" * len(models))
        return int(self._connection().execute(
            f"SELECT COUNT(*) FROM tasks WHERE key_id = ? AND model IN ({marks}) AND mode = ? AND state IN (?, ?)",
            (key_id, *models, mode, TaskState.PENDING, TaskState.RUNNING)).fetchone()[0])

    def cancel_pending(self, key_id: str) -> int:
        with self._write() as db:
            canceled = [row[0] for row in db.execute("SELECT task_id FROM tasks WHERE key_id = ? AND state = ?",
                                                     (key_id, TaskState.PENDING))]
            marks = ",".join("?" * len(canceled))
            db.execute(f"UPDATE tasks SET state = ?, finished_at = ? WHERE task_id IN ({marks})",
                       (TaskState.CANCELED, self.clock(), *canceled))
            db.execute(f"DELETE FROM task_inputs WHERE task_id IN ({marks})", canceled)
        return len(canceled)

    def purge(self, submitted_before: float) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM tasks WHERE submitted_at < ? AND state NOT IN (?, ?)",
                              (submitted_before, TaskState.PENDING, TaskState.RUNNING)).rowcount


def _record(row: tuple[Any, ...]) -> TaskRecord:
    (task_id, key_id, request_id, mode, model, state, parameters, batch_key, attempt, submitted_at, started_at,
     finished_at, progress_step, progress_total, outputs, actual_prompt, error_code, error_status,
     error_message) = row
    return TaskRecord(
        task_id=task_id, key_id=key_id, request_id=request_id, mode=TaskMode(mode), model=model,
        state=TaskState(state), parameters=json.loads(parameters), batch_key=batch_key, attempt=attempt,
        submitted_at=submitted_at, started_at=started_at, finished_at=finished_at, progress_step=progress_step,
        progress_total=progress_total, outputs=json.loads(outputs), actual_prompt=actual_prompt,
        error_code=error_code, error_status=error_status, error_message=error_message)

