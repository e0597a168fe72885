"""The async task API through the official SDK's ``ImageSynthesis`` and raw HTTP, against a real server."""

from __future__ import annotations

import io
import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import numpy as np
import pytest
from dashscope import ImageSynthesis
from PIL import Image

from qwen_image_server.keys import KeyStore
from tests.conftest import png_bytes
from tests.integration.tasks_api import (
    ASYNC,
    BLOCKING_SIZE,
    MODEL,
    MULTIMODAL,
    SYNTHESIS,
    blocking_task,
    submit,
    submit_and_wait,
    task,
    wait_for,
)

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")


pytestmark = pytest.mark.usefixtures("sdk_at_server")


def fetch_png(url):
    reply = httpx.get(url, timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(reply.content))


def beijing(text):
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone(timedelta(hours=8)))


def test_sdk_call_submits_and_waits_for_the_image(server):
    response = ImageSynthesis.call(api_key=server.key, model=MODEL, prompt="a red fox", size="512*512",
                                   prompt_extend=False, seed=7)
    assert response.status_code == 200, (response.code, response.message)
    assert response.output.task_status == "SUCCEEDED"
    [result] = response.output.results
    assert result.orig_prompt == "a red fox"
    assert fetch_png(result.url).size == (512, 512)
    assert response.usage.image_count == 1


def test_sdk_async_call_then_fetch_and_wait(server):
    created = ImageSynthesis.async_call(api_key=server.key, model=MODEL, prompt="a lighthouse", size="512*512",
                                        prompt_extend=False)
    assert created.status_code == 200 and created.output.task_status == "PENDING" and created.request_id
    fetched = ImageSynthesis.fetch(created, api_key=server.key)
    assert fetched.output.task_id == created.output.task_id
    assert fetched.output.task_status in {"PENDING", "RUNNING", "SUCCEEDED"}
    done = ImageSynthesis.wait(created, api_key=server.key)
    output = done.output
    assert output.task_status == "SUCCEEDED"
    for name in ("submit_time", "scheduled_time", "end_time"):
        assert TIMESTAMP.match(output[name]), output[name]
    now = datetime.now(UTC)
    assert abs(beijing(output.end_time) - now) < timedelta(minutes=2)
    assert beijing(output.submit_time) <= beijing(output.scheduled_time) <= beijing(output.end_time)
    assert output.task_metrics == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert fetch_png(output.results[0].url).size == (512, 512)


def test_prompt_extend_shows_the_actual_prompt(server):
    response = ImageSynthesis.call(api_key=server.key, model=MODEL, prompt="a cat", size="512*512",
                                   prompt_extend=True)
    [result] = response.output.results
    assert result.orig_prompt == "a cat"
    assert result.actual_prompt and result.actual_prompt != "a cat"


def test_pending_task_can_be_canceled_once(server):
    with server.client() as client:
        blocker = blocking_task(client)
        target = submit(client, prompt="never drawn")
        canceled = ImageSynthesis.cancel(target, api_key=server.key)
        assert canceled.status_code == 200, (canceled.code, canceled.message)
        payload = task(client, target)["output"]
        assert payload["task_status"] == "CANCELED" and TIMESTAMP.match(payload["end_time"])
        again = ImageSynthesis.cancel(target, api_key=server.key)
        assert (again.status_code, again.code) == (400, "UnsupportedOperation")
        running = ImageSynthesis.cancel(blocker, api_key=server.key)
        assert (running.status_code, running.code) == (400, "UnsupportedOperation")
        assert wait_for(client, blocker, {"SUCCEEDED"})["output"]["task_status"] == "SUCCEEDED"
        assert task(client, target)["output"]["task_status"] == "CANCELED"


def test_running_task_reports_its_progress(server):
    with server.client() as client:
        task_id = submit(client, prompt="progress", size=BLOCKING_SIZE)
        running = wait_for(client, task_id, {"RUNNING"})["output"]
        deadline = time.monotonic() + 60
        while "progress" not in running and time.monotonic() < deadline:
            running = task(client, task_id)["output"]
        assert running["task_status"] == "RUNNING", running
        assert 1 <= running["progress"]["step"] <= running["progress"]["total_steps"] == 2
        assert running["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 0, "FAILED": 0}
        assert TIMESTAMP.match(running["scheduled_time"])
        assert "progress" not in wait_for(client, task_id, {"SUCCEEDED"})["output"]


def test_list_pages_through_the_callers_tasks(server):
    with server.client() as client:
        mine = [submit(client, prompt=f"listed {i}", size="512*512") for i in range(3)]
        for task_id in mine:
            wait_for(client, task_id, {"SUCCEEDED"})
    first = ImageSynthesis.list(api_key=server.key, model_name=MODEL, status="SUCCEEDED", page_size=2)
    assert first.status_code == 200
    assert first.output["page_no"] == 1 and first.output["page_size"] == 2
    assert first.output["total"] >= 3 and first.output["total_page"] >= 2
    newest = [row["task_id"] for row in first.output["data"]]
    assert newest == mine[::-1][:2]
    row = first.output["data"][0]
    assert row["status"] == "SUCCEEDED" and row["model_name"] == MODEL
    assert row["gmt_create"] <= row["start_time"] <= row["end_time"]
    second = ImageSynthesis.list(api_key=server.key, model_name=MODEL, status="SUCCEEDED", page_size=2, page_no=2)
    assert second.output["data"][0]["task_id"] == mine[0]
    # Other test files on the session server may have run qwen-image-edit: check the rows, not an empty list.
    other_model = ImageSynthesis.list(api_key=server.key, model_name="qwen-image-edit", page_size=100).output
    assert {row["model_name"] for row in other_model["data"]} <= {"qwen-image-edit"}
    assert not {row["task_id"] for row in other_model["data"]} & set(mine)
    bad = ImageSynthesis.list(api_key=server.key, status="DONE")
    assert (bad.status_code, bad.code) == (400, "InvalidParameter")


def test_tasks_are_private_to_their_key_and_unknown_ids_answer_unknown(server):
    other_key = KeyStore(server.settings.database_path).create("other")
    with server.client() as client:
        task_id = submit(client, size="512*512")
        wait_for(client, task_id, {"SUCCEEDED"})
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {other_key}"}) as other:
        seen = other.get(f"/api/v1/tasks/{task_id}")
        assert seen.status_code == 200
        assert seen.json()["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
        assert seen.json()["request_id"]
        refused = other.post(f"/api/v1/tasks/{task_id}/cancel")
        assert (refused.status_code, refused.json()["code"]) == (400, "UnsupportedOperation")
        assert other.get("/api/v1/tasks").json()["total"] == 0
    unknown = ImageSynthesis.fetch(str(uuid.uuid4()), api_key=server.key)
    assert unknown.status_code == 200 and unknown.output.task_status == "UNKNOWN"


def test_image_synthesis_needs_the_async_header(server):
    with server.client() as client:
        response = client.post(SYNTHESIS, json={"model": MODEL, "input": {"prompt": "a"}})
    assert response.status_code == 403
    assert response.json()["code"] == "AccessDenied" and "synchronous" in response.json()["message"]


@pytest.mark.parametrize("payload, message", [
    ({"model": MODEL, "input": {}}, "input.prompt"),
    ({"model": MODEL, "input": {"prompt": "  "}}, "input.prompt"),
    ({"model": "qwen-image-edit-plus", "input": {"prompt": "a"}}, "multimodal-generation"),
    ({"model": MODEL, "input": {"prompt": "a"}, "parameters": {"size": "12*12"}}, "size"),
])
def test_bad_async_submissions_are_refused_before_queueing(server, payload, message):
    with server.client() as client:
        response = client.post(SYNTHESIS, headers=ASYNC, json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "InvalidParameter" and message in response.json()["message"]


def test_multimodal_endpoint_runs_an_edit_as_a_task_with_the_async_header(server, image_host):
    url = image_host.add("async-edit.png", png_bytes((600, 400)))
    with server.client() as client:
        response = client.post(MULTIMODAL, headers=ASYNC, json={
            "model": "qwen-image-edit-plus",
            "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "make it blue"}]}]},
            "parameters": {"size": "512*512", "n": 2, "prompt_extend": False}})
    assert response.status_code == 200, response.text
    created = response.json()["output"]
    assert created["task_status"] == "PENDING"
    done = ImageSynthesis.wait(created["task_id"], api_key=server.key)
    assert done.output.task_status == "SUCCEEDED"
    assert [fetch_png(result.url).size for result in done.output.results] == [(512, 512)] * 2
    assert done.output.task_metrics == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}
    assert done.usage.image_count == 2


def test_sync_result_stays_reachable_as_a_task_under_its_request_id(server):
    with server.client() as client:
        response = client.post(MULTIMODAL, json={
            "model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "a boat"}]}]},
            "parameters": {"size": "512*512", "prompt_extend": False}})
        assert response.status_code == 200
        request_id = response.json()["request_id"]
        output = task(client, request_id)["output"]
    assert output["task_status"] == "SUCCEEDED"
    assert output["results"][0]["url"].split("?")[0] == response.json()["output"]["choices"][0]["message"][
        "content"][0]["image"].split("?")[0]


def test_sync_client_that_disconnects_cancels_its_pending_task_and_keeps_a_running_one(server):
    body = {"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "gone"}]}]},
            "parameters": {"size": "512*512", "prompt_extend": False}}
    with server.client() as client:
        blocker = blocking_task(client, size="1536*1536")  # about 6 s
        with pytest.raises(httpx.ReadTimeout):
            client.post(MULTIMODAL, json=body, timeout=0.5)
        listed = client.get("/api/v1/tasks", params={"page_size": 5}).json()["data"]
        abandoned = next(row for row in listed if row["task_id"] != blocker)
        deadline = time.monotonic() + 10
        while task(client, abandoned["task_id"])["output"]["task_status"] != "CANCELED":
            assert time.monotonic() < deadline, "a disconnected sync request left its task queued"
            time.sleep(0.1)
        assert wait_for(client, blocker, {"SUCCEEDED"})


def test_compatible_pending_tasks_run_as_one_batched_pipeline_call(server):
    runner = server.app.state.runners[0]
    transformer = runner.engine.pipeline(server.app.state.registry.get(MODEL).plan).transformer
    passes = []
    with server.client() as client:
        blocker = blocking_task(client)
        handle = transformer.register_forward_hook(
            lambda module, args, kwargs, output: passes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
        try:
            batch = [submit(client, prompt=f"batched {i}", seed=100 + i) for i in range(4)]
            wait_for(client, blocker, {"SUCCEEDED"})
            for task_id in batch:
                wait_for(client, task_id, {"SUCCEEDED"})
        finally:
            handle.remove()
        steps = server.app.state.registry.get(MODEL).steps
        # The blocker's remaining passes (batch 1), then one call whose every pass holds all four prompts;
        # run one by one, the four would have made 4 * steps passes of batch 1.
        assert passes[-steps:] == [4] * steps, passes
        assert passes[:-steps] == [1] * (len(passes) - steps) and len(passes) <= 2 * steps, passes
        batched = fetch_png(task(client, batch[2])["output"]["results"][0]["url"])
        alone = fetch_png(task(client, submit_and_wait(client, prompt="batched 2", seed=102))["output"][
            "results"][0]["url"])
    difference = np.abs(np.asarray(batched, dtype=float) - np.asarray(alone, dtype=float))
    assert difference.mean() < 0.01, "a batched task's image must not depend on its batch mates"


def test_metrics_count_requests_tasks_images_and_batches(server):
    with server.client() as client:
        submit_and_wait(client, size="512*512")
        text = client.get("/metrics").text

    def value(pattern):
        match = re.search(pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, pattern
        return float(match.group(1))
    assert value(r'qwen_image_server_requests_total\{code="",method="POST",'
                 r'route="/api/v1/services/aigc/text2image/image-synthesis",status="200"\}') >= 1
    assert value(r'qwen_image_server_requests_total\{code="InvalidParameter",method="POST",'
                 r'route="/api/v1/services/aigc/text2image/image-synthesis",status="400"\}') >= 1
    assert value(r"qwen_image_server_queue_depth") >= 0
    assert value(r'qwen_image_server_images_generated_total\{model="qwen-image-2.0"\}') >= 1
    assert value(r'qwen_image_server_tasks_finished_total\{model="qwen-image-2.0",state="SUCCEEDED"\}') >= 1
    assert value(r'qwen_image_server_task_queued_seconds_count\{model="qwen-image-2.0"\}') >= 1
    assert value(r'qwen_image_server_task_running_seconds_count\{model="qwen-image-2.0"\}') >= 1
    assert value(r"qwen_image_server_batch_size_count") >= 1
    assert value(r'qwen_image_server_steps_per_second\{model="qwen-image-2.0"\}') > 0


def test_concurrent_submissions_all_complete(server):
    with server.client() as client:
        ids, errors = [], []

        def one(i):
            try:
                ids.append(submit(client, prompt=f"crowd {i}", size="512*512"))
            except AssertionError as error:
                errors.append(error)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors and len(set(ids)) == 6
        for task_id in ids:
            assert wait_for(client, task_id, {"SUCCEEDED"})["output"]["task_metrics"]["SUCCEEDED"] == 1
