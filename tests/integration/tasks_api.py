"""Helpers for tests of the task API: submit over raw HTTP, poll, and keep the worker busy."""

from __future__ import annotations

import time

MODEL = "qwen-image-2.0"  # the 2.1 family: fast at small sizes on CPU, and it batches prompts
SYNTHESIS = "/api/v1/services/aigc/text2image/image-synthesis"
MULTIMODAL = "/api/v1/services/aigc/multimodal-generation/generation"
ASYNC = {"X-DashScope-Async": "enable"}
BLOCKING_SIZE = "1024*1024"  # about 2 s on 2 cores: long enough to keep later tasks PENDING


def submit(client, prompt="a red fox", size="512*512", **parameters):
    response = client.post(SYNTHESIS, headers=ASYNC, json={
        "model": MODEL, "input": {"prompt": prompt},
        "parameters": {"size": size, "prompt_extend": False, **parameters}})
    assert response.status_code == 200, response.text
    return response.json()["output"]["task_id"]


def task(client, task_id):
    response = client.get(f"/api/v1/tasks/{task_id}")
    assert response.status_code == 200
    return response.json()


def wait_for(client, task_id, states, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        payload = task(client, task_id)
        if payload["output"]["task_status"] in states:
            return payload
        time.sleep(0.05)
    raise TimeoutError(f"task {task_id} never reached {states}")


def blocking_task(client, size=BLOCKING_SIZE):
    """Occupies the single worker, so tasks submitted next stay PENDING for a few seconds."""
    task_id = submit(client, prompt="slow", size=size)
    wait_for(client, task_id, {"RUNNING"})
    return task_id


def submit_and_wait(client, **parameters):
    task_id = submit(client, **parameters)
    wait_for(client, task_id, {"SUCCEEDED"})
    return task_id
