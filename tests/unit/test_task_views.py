"""Task records from a real SQLite store rendered as the hosted API's task shapes (spec §2.3, §2.4)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from qwen_image_server.api.dashscope.tasks import TaskViews, beijing_time, parse_list_time
from qwen_image_server.api.submissions import task_error
from qwen_image_server.errors import InvalidParameter, UnsupportedOperation
from qwen_image_server.media.storage import ResultStore, UrlSigner
from qwen_image_server.tasks.models import Job, NewTask, Quota, TaskFailure, TaskMode
from qwen_image_server.tasks.sqlite import SqliteTaskStore

TTL = 24 * 3600


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return SqliteTaskStore(tmp_path / "tasks.db", clock=clock)


@pytest.fixture
def views(store, tmp_path):
    return TaskViews(store, ResultStore(tmp_path / "results", UrlSigner(b"k"), "http://test", TTL), TTL)


def add(store, key="key", n=1):
    task_id = str(uuid.uuid4())
    job = Job(model="qwen-image", prompt="a cat", width=1328, height=1328, seed=3, n=n)
    store.create(NewTask(task_id, key, "req", TaskMode.ASYNC, job, [], None), Quota(10))
    return task_id


def shape(views, task_id, key="key"):
    return asyncio.run(views.get(task_id, key, "rid")).model_dump(exclude_none=True)


def test_pending_shows_only_id_status_and_submit_time(store, views):
    task_id = add(store)
    payload = shape(views, task_id)
    assert payload["request_id"] == "rid"
    assert set(payload["output"]) == {"task_id", "task_status", "submit_time"}
    assert payload["output"]["task_status"] == "PENDING"


def test_running_carries_metrics_and_progress(store, views):
    task_id = add(store, n=2)
    store.claim("w", 30, 1)
    store.progress([task_id], "w", 3, 40)
    output = shape(views, task_id)["output"]
    assert output["task_status"] == "RUNNING" and "scheduled_time" in output
    assert output["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 0}
    assert output["progress"] == {"step": 3, "total_steps": 40}


def test_failed_puts_code_and_message_inside_output(store, views):
    task_id = add(store)
    store.claim("w", 30, 1)
    store.fail(task_id, "w", TaskFailure("InternalError.Algo", 500, "Inference internal error."))
    payload = shape(views, task_id)
    output = payload["output"]
    assert (output["task_status"], output["code"], output["message"]) == (
        "FAILED", "InternalError.Algo", "Inference internal error.")
    assert {"submit_time", "scheduled_time", "end_time"} <= set(output) and "usage" not in payload
    error = task_error(store.get(task_id))
    assert (error.status, error.code, error.message) == (500, "InternalError.Algo", "Inference internal error.")


def test_succeeded_signs_result_urls_and_reports_usage(store, views):
    task_id = add(store)
    store.claim("w", 30, 1)
    store.succeed(task_id, "w", [f"{uuid.UUID(task_id).hex}-0.png"], "a cat, detailed")
    payload = shape(views, task_id)
    [result] = payload["output"]["results"]
    assert result["url"].startswith(f"http://test/results/{uuid.UUID(task_id).hex}-0.png?Expires=")
    assert (result["orig_prompt"], result["actual_prompt"]) == ("a cat", "a cat, detailed")
    assert payload["usage"] == {"image_count": 1, "width": 1328, "height": 1328}


def test_canceled_has_an_end_time(store, views):
    task_id = add(store)
    asyncio.run(views.cancel(task_id, "key", "rid"))
    output = shape(views, task_id)["output"]
    assert output["task_status"] == "CANCELED" and "end_time" in output
    with pytest.raises(UnsupportedOperation):
        asyncio.run(views.cancel(task_id, "key", "rid"))


def test_tasks_older_than_their_retention_and_other_keys_tasks_are_unknown(store, views, clock):
    task_id = add(store)
    assert shape(views, task_id, key="someone-else")["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    clock.now -= TTL + 60
    old = add(store)
    assert shape(views, old)["output"] == {"task_id": old, "task_status": "UNKNOWN"}
    listed = asyncio.run(views.list("key", "rid", page_no=1, page_size=10, model_name=None, status=None,
                                    start_time=None, end_time=None, api_key_id=None))
    assert [row.task_id for row in listed.data] == [task_id]


def test_times_are_written_and_read_in_utc_plus_8():
    assert beijing_time(0) == "1970-01-01 08:00:00.000"
    assert parse_list_time("19700101080001", "start_time") == 1.0
    with pytest.raises(InvalidParameter):
        parse_list_time("1970-01-01", "start_time")


@pytest.mark.parametrize("page_no, page_size", [(0, 10), (1, 0), (1, 101)])
def test_list_paging_is_bounded(views, page_no, page_size):
    with pytest.raises(InvalidParameter):
        asyncio.run(views.list("key", "rid", page_no=page_no, page_size=page_size, model_name=None, status=None,
                               start_time=None, end_time=None, api_key_id=None))
