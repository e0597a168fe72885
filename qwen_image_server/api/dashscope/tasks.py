"""The task endpoints' answers (spec §2.3, §2.4): one stored task record becomes the hosted API's shapes.

A task is visible only to the key that made it; to anyone else it does not exist (UNKNOWN), as it does
not after ``task_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timedelta, timezone

from qwen_image_server.api.dashscope.protocol import (
    CancelResponse,
    TaskJob,
    TaskListResponse,
    TaskMetrics,
    TaskOutput,
    TaskProgress,
    TaskResponse,
    TaskResult,
    TaskSummary,
    TaskUsage,
)
from qwen_image_server.errors import InvalidParameter, UnsupportedOperation
from qwen_image_server.media.storage import ResultStore
from qwen_image_server.tasks.models import TaskFilter, TaskPage, TaskRecord, TaskState
from qwen_image_server.tasks.store import TaskStore

BEIJING = timezone(timedelta(hours=8), "UTC+8")
UNKNOWN = "UNKNOWN"
REGION = "local"
MAX_PAGE_SIZE = 100
MAX_PAGE_NO = 1_000_000  # keeps the row offset within SQLite's 64-bit integers


def beijing_time(timestamp: float | None) -> str | None:
    """``YYYY-MM-DD HH:mm:ss.SSS`` in UTC+8, as the hosted API writes task times."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, BEIJING).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_list_time(text: str | None, name: str) -> float | None:
    """The list filter's ``YYYYMMDDhhmmss`` (UTC+8) as a Unix time."""
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=BEIJING).timestamp()
    except ValueError as error:
        raise InvalidParameter(f"{name} must look like 20250101000000 (YYYYMMDDhhmmss, UTC+8).") from error


def milliseconds(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)


class TaskViews:
    def __init__(self, store: TaskStore, results: ResultStore, task_ttl_seconds: float) -> None:
        self.store = store
        self.results = results
        self.task_ttl_seconds = task_ttl_seconds

    async def _visible(self, task_id: str, key_id: str) -> TaskRecord | None:
        record = await asyncio.to_thread(self.store.get, task_id)
        if record is None or record.key_id != key_id or record.submitted_at < time.time() - self.task_ttl_seconds:
            return None
        return record

    async def get(self, task_id: str, key_id: str, request_id: str) -> TaskResponse:
        record = await self._visible(task_id, key_id)
        if record is None:
            return TaskResponse(request_id=request_id, output=TaskOutput(task_id=task_id, task_status=UNKNOWN))
        return self.describe(record, request_id)

    def describe(self, record: TaskRecord, request_id: str) -> TaskResponse:
        n = int(record.parameters.get("n", 1))
        output = TaskOutput(task_id=record.task_id, task_status=record.state,
                            submit_time=beijing_time(record.submitted_at))
        usage = None
        if record.state is not TaskState.PENDING:
            output.scheduled_time = beijing_time(record.started_at)
        if record.state is TaskState.RUNNING:
            output.task_metrics = TaskMetrics(TOTAL=n, SUCCEEDED=0, FAILED=0)
            if record.progress_step is not None and record.progress_total is not None:
                output.progress = TaskProgress(step=record.progress_step, total_steps=record.progress_total)
        if record.state.finished:
            output.end_time = beijing_time(record.finished_at)
        if record.state is TaskState.SUCCEEDED:
            prompt = record.parameters.get("prompt")
            output.results = [TaskResult(url=url, orig_prompt=prompt, actual_prompt=record.actual_prompt)
                              for url in self.results.urls(record.outputs, record.finished_at)]
            output.task_metrics = TaskMetrics(TOTAL=n, SUCCEEDED=len(record.outputs), FAILED=n - len(record.outputs))
            usage = TaskUsage(image_count=len(record.outputs), width=record.parameters["width"],
                              height=record.parameters["height"])
        if record.state is TaskState.FAILED:
            output.code, output.message = record.error_code, record.error_message
            output.task_metrics = TaskMetrics(TOTAL=n, SUCCEEDED=0, FAILED=n)
        return TaskResponse(request_id=request_id, output=output, usage=usage)

    async def cancel(self, task_id: str, key_id: str, request_id: str) -> CancelResponse:
        if not await asyncio.to_thread(self.store.cancel, task_id, key_id):
            raise UnsupportedOperation()
        return CancelResponse(request_id=request_id)

    async def list(self, key_id: str, request_id: str, *, page_no: int, page_size: int, model_name: str | None,
                   status: str | None, start_time: str | None, end_time: str | None,
                   api_key_id: str | None) -> TaskListResponse:
        if not 1 <= page_no <= MAX_PAGE_NO or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidParameter(f"page_no must be between 1 and {MAX_PAGE_NO} and page_size between 1 and "
                                   f"{MAX_PAGE_SIZE}.")
        try:
            state = TaskState(status) if status else None
        except ValueError as error:
            raise InvalidParameter(f"status must be one of {', '.join(TaskState)}.") from error
        oldest = time.time() - self.task_ttl_seconds
        since = parse_list_time(start_time, "start_time")
        query = TaskFilter(key_id=key_id, model=model_name, state=state, submitted_from=max(since or oldest, oldest),
                           submitted_to=parse_list_time(end_time, "end_time"), page_no=page_no, page_size=page_size)
        if api_key_id is not None and api_key_id != key_id:
            page = TaskPage(total=0, rows=[])  # another key's tasks are never visible
        else:
            page = await asyncio.to_thread(self.store.list_tasks, query)
        return TaskListResponse(
            request_id=request_id, total=page.total, total_page=max(1, math.ceil(page.total / page_size)),
            page_no=page_no, page_size=page_size,
            data=[TaskSummary(task_id=row.task_id, status=row.state, model_name=row.model,
                              api_key_id=row.key_id, request_id=row.request_id, region=REGION,
                              gmt_create=int(row.submitted_at * 1000), start_time=milliseconds(row.started_at),
                              end_time=milliseconds(row.finished_at))
                  for row in page.rows],
            tasks=[TaskJob(task_id=row.task_id, task_status=row.state, model_name=row.model, request_id=row.request_id,
                           submit_time=beijing_time(row.submitted_at), scheduled_time=beijing_time(row.started_at),
                           end_time=beijing_time(row.finished_at))
                   for row in page.rows])
