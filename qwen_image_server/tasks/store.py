"""The task store's interface. SQLite implements it now; a server database can implement it for several replicas.

Every state change is one atomic, conditional update, so two workers can never both own a task and a
late worker (whose lease expired and was re-queued) can never overwrite the new owner's result.
Methods block; async callers run them in a thread.
"""

from __future__ import annotations

from typing import Protocol

from qwen_image_server.tasks.models import (
    NewTask,
    Quota,
    Refusal,
    TaskFailure,
    TaskFilter,
    TaskMode,
    TaskPage,
    TaskRecord,
)


class TaskStore(Protocol):
    def create(self, task: NewTask, quota: Quota) -> Refusal | None:
        """Stores a PENDING task with its inputs if it stays within ``quota`` (checked atomically with the
        insert); otherwise stores nothing and says which bound it would pass."""
        ...

    def refusal(self, key_id: str, cost: float, quota: Quota) -> Refusal | None:
        """What ``create`` would refuse a task of the key for now, if anything (a cheap early check)."""
        ...

    def get(self, task_id: str) -> TaskRecord | None: ...

    def inputs(self, task_id: str) -> list[bytes]: ...

    def claim(self, worker: str, lease_seconds: float, max_batch: int) -> list[TaskRecord]:
        """Atomically moves the next PENDING task, and up to ``max_batch - 1`` PENDING tasks with the same
        batch key, to RUNNING under ``worker`` with a lease; each claim counts one attempt. The next task is
        the oldest of the key served least recently; a batch is filled round-robin across keys."""
        ...

    def heartbeat(self, task_ids: list[str], worker: str, lease_seconds: float) -> None:
        """Extends the leases ``worker`` still holds."""
        ...

    def progress(self, task_ids: list[str], worker: str, step: int, total: int) -> None: ...

    def succeed(self, task_id: str, worker: str, outputs: list[str], actual_prompt: str | None,
                output_bytes: int = 0) -> bool:
        """Completes a task ``worker`` still owns; False if it lost the lease meanwhile. ``output_bytes``
        counts against the key's quota of stored results."""
        ...

    def fail(self, task_id: str, worker: str, failure: TaskFailure) -> bool: ...

    def release(self, task_ids: list[str], worker: str) -> None:
        """Hands unfinished tasks back to the queue on shutdown, without spending an attempt."""
        ...

    def cancel(self, task_id: str, key_id: str) -> bool:
        """Cancels the key's task if it is still PENDING; False otherwise."""
        ...

    def reap(self, max_attempts: int) -> tuple[int, int]:
        """Re-queues RUNNING tasks whose lease expired, or fails those out of attempts; returns both counts."""
        ...

    def list_tasks(self, query: TaskFilter) -> TaskPage:
        """One page of a key's tasks, newest first, without their parameters."""
        ...

    def count_pending(self) -> int: ...

    def count_active(self, key_id: str, models: list[str], mode: TaskMode) -> int:
        """The key's PENDING and RUNNING tasks of these models and one mode, for concurrency limits."""
        ...

    def cancel_pending(self, key_id: str) -> int:
        """Cancels every PENDING task of a key (it was revoked); returns how many."""
        ...

    def purge(self, submitted_before: float) -> int:
        """Deletes tasks (and their inputs) submitted before the cut-off; returns how many."""
        ...
