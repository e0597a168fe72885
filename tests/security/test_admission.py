"""One key cannot starve the rest, against a live server: limits per served weights rather than per alias,
a per-key share of the queue, claims that take turns across keys, a budget of work in flight, a quota of
stored results and a runtime cap per task.

The engine is held (``EngineRunner.holding``) wherever tasks must stay queued, so nothing here depends on
how fast this machine runs inference.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from qwen_image_server.keys import KeyStore
from qwen_image_server.settings import RateLimit
from tests.conftest import RunningServer, free_socket, serving
from tests.integration.tasks_api import ASYNC, MULTIMODAL, SYNTHESIS, wait_for

MODEL = "qwen-image-2.0"
ALIASES = ("qwen-image-2.0-pro", "qwen-image-2.0-pro-2026-03-03", "qwen-image-2.0-pro-2026-04-22")
SHARE = 3


@pytest.fixture(scope="module")
def fair(tmp_path_factory, demo_models_dir) -> Iterator[RunningServer]:
    limits = {"*": RateLimit(per_second=100), **{alias: RateLimit(per_second=2) for alias in ALIASES}}
    with serving(tmp_path_factory.mktemp("fair"), demo_models_dir, free_socket(), enabled_models=[MODEL, *ALIASES],
                 rate_limits=limits, key_requests_per_second=20, max_pending_tasks_per_key=SHARE,
                 max_batch_size=1) as running:
        yield running


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory, demo_models_dir) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("budgeted"), demo_models_dir, free_socket(), enabled_models=[MODEL],
                 rate_limits_enabled=False, max_cost_per_key=1.0, max_result_bytes_per_key=1) as running:
        yield running


def client_for(server: RunningServer, name: str) -> httpx.Client:
    key = KeyStore(server.settings.database_path).create(name)
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def synthesis(prompt: str, model: str = MODEL) -> dict:
    return {"model": model, "input": {"prompt": prompt}, "parameters": {"size": "512*512", "prompt_extend": False}}


def submitted(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return answer.json()["output"]["task_id"]


def refused(answer: httpx.Response, code: str) -> str:
    assert answer.status_code == 429, answer.text
    assert answer.json()["code"] == code and int(answer.headers["Retry-After"]) >= 1
    return answer.json()["message"]


def engine_held(server: RunningServer):
    return server.app.state.runners[0].holding()


def test_rotating_dated_aliases_buys_no_extra_rate(fair):
    with client_for(fair, "rotator") as client:
        answers = [client.post(SYNTHESIS, headers=ASYNC, json=synthesis("", model)) for model in ALIASES]
    assert [answer.status_code for answer in answers[:2]] == [400, 400]
    assert "2 per second" in refused(answers[2], "Throttling.RateQuota")


def test_every_request_of_a_key_counts_before_its_body_is_read(fair):
    with client_for(fair, "prober") as client, client_for(fair, "bystander") as bystander:
        answers = [client.post(MULTIMODAL, content=b"not even json") for _ in range(25)]
        assert {answer.status_code for answer in answers} == {400, 429}
        assert "for this API key" in refused(answers[-1], "Throttling.RateQuota")
        assert bystander.get("/api/v1/tasks/unknown").status_code == 200, "limits are per key"


def test_a_flooding_key_gets_its_share_and_another_key_runs_next(fair):
    with client_for(fair, "flood") as flood, client_for(fair, "patient") as patient:
        with engine_held(fair):
            first = submitted(flood.post(SYNTHESIS, headers=ASYNC, json=synthesis("flood 0")))
            wait_for(flood, first, {"RUNNING"})
            queued = [submitted(flood.post(SYNTHESIS, headers=ASYNC, json=synthesis(f"flood {i}")))
                      for i in range(1, SHARE + 1)]
            assert "its share of the queue" in refused(
                flood.post(SYNTHESIS, headers=ASYNC, json=synthesis("one too many")), "Throttling.RateQuota")
            other = submitted(patient.post(SYNTHESIS, headers=ASYNC, json=synthesis("patient")))
        times = {task_id: wait_for(client, task_id, {"SUCCEEDED"})["output"]["scheduled_time"]
                 for client, task_ids in ((flood, queued), (patient, [other])) for task_id in task_ids}
    assert times[other] < min(times[task_id] for task_id in queued), "the other key went before the flood's rest"


def test_a_keys_work_in_flight_is_bounded_by_its_budget(budgeted):
    with client_for(budgeted, "busy") as busy, client_for(budgeted, "idle") as idle, engine_held(budgeted):
        submitted(busy.post(SYNTHESIS, headers=ASYNC, json=synthesis("alone, any size runs")))
        assert "megapixel-steps" in refused(busy.post(SYNTHESIS, headers=ASYNC, json=synthesis("more")),
                                            "Throttling.RateQuota")
        submitted(idle.post(SYNTHESIS, headers=ASYNC, json=synthesis("another key's first")))


def test_a_keys_stored_results_are_bounded_by_its_quota(budgeted):
    with client_for(budgeted, "hoarder") as client:
        wait_for(client, submitted(client.post(SYNTHESIS, headers=ASYNC, json=synthesis("first"))), {"SUCCEEDED"})
        assert "stored results" in refused(client.post(SYNTHESIS, headers=ASYNC, json=synthesis("second")),
                                           "Throttling.AllocationQuota")


def test_a_task_past_the_runtime_cap_fails_with_the_reason(tmp_path, demo_models_dir):
    with serving(tmp_path, demo_models_dir, free_socket(), enabled_models=[MODEL], rate_limits_enabled=False,
                 task_max_seconds=0.001) as server, server.client() as client:
        task = wait_for(client, submitted(client.post(SYNTHESIS, headers=ASYNC, json=synthesis("endless"))),
                        {"FAILED", "SUCCEEDED"})
    assert task["output"]["code"] == "RequestTimeOut"
    assert "ran longer than 0.001 s" in task["output"]["message"]
