"""Overload and per-key limits: fast 429s with Retry-After in the API's error shape, and recovery after."""

from __future__ import annotations

import time

import httpx
import pytest
import time_machine
from dashscope import ImageSynthesis

from qwen_image_server.keys import KeyStore
from qwen_image_server.settings import RateLimit
from tests.conftest import free_socket, sdk_pointed_at, serving
from tests.integration.tasks_api import ASYNC, MODEL, MULTIMODAL, SYNTHESIS, blocking_task, wait_for

MAX_PENDING = 2


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory, demo_models_dir):
    with serving(tmp_path_factory.mktemp("small-queue"), demo_models_dir, free_socket(), enabled_models=[MODEL],
                 max_pending_tasks=MAX_PENDING, rate_limits_enabled=False) as running:
        yield running


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, demo_models_dir):
    limits = {"*": RateLimit(per_second=2), MODEL: RateLimit(per_second=2, concurrent_async_tasks=1)}
    with serving(tmp_path_factory.mktemp("limited"), demo_models_dir, free_socket(), enabled_models=[MODEL],
                 rate_limits=limits) as running:
        yield running


def synthesis(prompt="a kite", size="512*512"):
    return {"model": MODEL, "input": {"prompt": prompt}, "parameters": {"size": size, "prompt_extend": False}}


def expect_429(response, code):
    assert response.status_code == 429, response.text
    payload = response.json()
    assert payload["code"] == code and payload["message"] and payload["request_id"]
    assert int(response.headers["Retry-After"]) >= 1


def test_a_full_queue_answers_429_at_once_and_recovers(small_queue_server):
    with small_queue_server.client() as client:
        blocker = blocking_task(client, size="1536*1536")
        accepted = [client.post(SYNTHESIS, headers=ASYNC, json=synthesis(f"queued {i}")) for i in range(MAX_PENDING)]
        assert [response.status_code for response in accepted] == [200] * MAX_PENDING
        started = time.perf_counter()
        refused = client.post(SYNTHESIS, headers=ASYNC, json=synthesis("one too many"))
        refused_sync = client.post(MULTIMODAL, json={
            "model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "sync too"}]}]},
            "parameters": {"size": "512*512"}})
        assert time.perf_counter() - started < 2, "refusals must not wait for the queue"
        expect_429(refused, "Throttling")
        expect_429(refused_sync, "Throttling")
        with sdk_pointed_at(small_queue_server.url):
            sdk = ImageSynthesis.async_call(api_key=small_queue_server.key, model=MODEL, prompt="sdk", size="512*512")
        assert (sdk.status_code, sdk.code) == (429, "Throttling")
        for task_id in [blocker, *(response.json()["output"]["task_id"] for response in accepted)]:
            assert wait_for(client, task_id, {"SUCCEEDED"})
        again = client.post(SYNTHESIS, headers=ASYNC, json=synthesis("after the storm"))
        assert again.status_code == 200
        assert wait_for(client, again.json()["output"]["task_id"], {"SUCCEEDED"})
        metrics = client.get("/metrics").text
    assert ('qwen_image_server_requests_total{code="Throttling",method="POST",'
            'route="/api/v1/services/aigc/text2image/image-synthesis",status="429"} 2.0') in metrics


@pytest.fixture(scope="module")
def clock():
    """The process's wall clock, moved by the tests instead of slept through (the rate windows read it); one
    for the module, so it never runs back behind what an earlier test did."""
    with time_machine.travel(time.time(), tick=True) as traveller:
        yield traveller


def test_requests_over_the_per_second_limit_get_rate_quota(limited_server, clock):
    other_key = KeyStore(limited_server.settings.database_path).create("other")
    clock.shift(1.1)
    with limited_server.client() as client:
        empty = synthesis(prompt="")
        answers = [client.post(SYNTHESIS, headers=ASYNC, json=empty) for _ in range(3)]
        assert [response.status_code for response in answers[:2]] == [400, 400]
        expect_429(answers[2], "Throttling.RateQuota")
        with httpx.Client(base_url=limited_server.url, headers={"Authorization": f"Bearer {other_key}"}) as other:
            assert other.post(SYNTHESIS, headers=ASYNC, json=empty).status_code == 400, "limits are per key"
        clock.shift(1.1)
        assert client.post(SYNTHESIS, headers=ASYNC, json=empty).status_code == 400


def test_concurrent_async_tasks_are_limited_per_key_but_sync_requests_are_not(limited_server, clock):
    clock.shift(1.1)
    with limited_server.client() as client:
        first = client.post(SYNTHESIS, headers=ASYNC, json=synthesis("first", size="1024*1024"))
        assert first.status_code == 200
        second = client.post(SYNTHESIS, headers=ASYNC, json=synthesis("second"))
        expect_429(second, "Throttling.RateQuota")
        assert "concurrent" in second.json()["message"]
        clock.shift(1.1)
        sync = client.post(MULTIMODAL, json={
            "model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "sync"}]}]},
            "parameters": {"size": "512*512", "prompt_extend": False}})
        assert sync.status_code == 200, sync.text
        assert wait_for(client, first.json()["output"]["task_id"], {"SUCCEEDED"})
        assert client.post(SYNTHESIS, headers=ASYNC, json=synthesis("third")).status_code == 200
