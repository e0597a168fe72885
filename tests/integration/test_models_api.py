"""The model listings against a real server: DashScope's Models API through both official SDK styles and raw
HTTP, and OpenAI's ``/v1/models`` through the ``openai`` SDK."""

from __future__ import annotations

import time

import dashscope
import openai
import pytest
from dashscope import Models

MODELS = "/api/v1/models"


pytestmark = pytest.mark.usefixtures("sdk_at_server")


@pytest.fixture(scope="module")
def served(server) -> list[str]:
    return server.app.state.registry.names()


@pytest.fixture(scope="module")
def openai_client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=60) as client:
        yield client


def test_sdk_lists_the_served_names_a_page_at_a_time(server, served):
    first = Models.list(page=1, page_size=5, api_key=server.key)
    assert first.status_code == 200, (first.code, first.message)
    assert first.request_id
    assert (first.output["page_no"], first.output["page_size"], first.output["total"]) == (1, 5, len(served))
    second = Models.list(page=2, page_size=5, api_key=server.key)
    names = [entry["model"] for entry in first.output["models"] + second.output["models"]]
    assert names == served[:10]
    assert {(entry["provider"], entry["opensource"]) for entry in first.output["models"]} == {("qwen", True)}


def test_sdk_gets_one_model_and_an_unknown_name_is_its_404(server):
    found = Models.get("qwen-image-edit-plus", api_key=server.key)
    assert found.status_code == 200, (found.code, found.message)
    assert found.output["model"] == "qwen-image-edit-plus"
    assert found.output["capabilities"]["max_images"] == 3
    missing = Models.get("wanx-v1", api_key=server.key)
    assert missing.status_code == 404 and missing.output is None
    assert "wanx-v1" in missing.message


def test_sdk_v2_client_lists_and_gets_models(server, served):
    client = dashscope.Client(api_key=server.key, base_url=f"{server.url}/api/v1")
    listed = client.models.list(page_size=100)
    assert listed.total_count == len(served)
    assert [model.model for model in listed.models] == served
    assert all(model.open_source and model.provider == "qwen" for model in listed.models)
    assert client.models.list(provider="qwen", page_size=3).models[2].model == served[2]
    model = client.models.get("qwen-image")
    assert (model.model, model.request_id is not None) == ("qwen-image", True)
    with pytest.raises(dashscope.v2.errors.APIStatusError, match="not found"):
        client.models.get("wanx-v1")


def test_capabilities_say_what_each_model_accepts(server):
    with server.client() as client:
        reply = client.get(MODELS, params={"page_size": 100})
    assert reply.status_code == 200
    entries = {entry["model"]: entry for entry in reply.json()["output"]["models"]}
    assert entries["qwen-image-edit-plus"] == {
        "model": "qwen-image-edit-plus", "provider": "qwen", "opensource": True,
        "license": "Apache-2.0 (random demo weights built by this server)", "commercial_use": True,
        "capabilities": {"min_images": 1, "max_images": 3, "max_n": 6, "size_rule": "sides", "default_size": None,
                         "prompt_extend": True, "steps": 2}}
    assert entries["qwen-image"]["capabilities"] == {
        "min_images": 0, "max_images": 0, "max_n": 1, "size_rule": "fixed", "default_size": "1664*928",
        "prompt_extend": True, "steps": 2}
    assert entries["qwen-image-edit"]["capabilities"]["size_rule"] == "auto"
    assert entries["qwen-image-2.0"]["capabilities"]["default_size"] == "2048*2048"
    assert str(server.settings.demo_models_dir) not in reply.text  # where the weights live stays private


def test_model_filter_and_pages_past_the_end_answer_empty(server, served):
    with server.client() as client:
        one = client.get(MODELS, params={"model": "qwen-image-2.0"}).json()["output"]
        unknown = client.get(MODELS, params={"model": "qwen-image-2"}).json()["output"]
        beyond = client.get(MODELS, params={"page_no": 3, "page_size": 10}).json()["output"]
    assert ([entry["model"] for entry in one["models"]], one["total"]) == (["qwen-image-2.0"], 1)
    assert (unknown["models"], unknown["total"]) == ([], 0)
    assert (beyond["models"], beyond["total"], beyond["page_no"]) == ([], len(served), 3)


@pytest.mark.parametrize("params, name", [
    ({"page_size": 0}, "page_size"), ({"page_size": 101}, "page_size"), ({"page_no": 0}, "page_no"),
    ({"page_no": "one"}, "page_no")])
def test_page_bounds_are_a_400(server, params, name):
    with server.client() as client:
        reply = client.get(MODELS, params=params)
    assert reply.status_code == 400
    assert reply.json()["code"] == "InvalidParameter" and name in reply.json()["message"]


@pytest.mark.parametrize("path", [MODELS, "/v1/models", "/v1/models/qwen-image"])
def test_listings_need_the_api_key(server, path):
    with server.client() as client:
        missing = client.get(path, headers={"Authorization": ""})
        wrong = client.get(path, headers={"Authorization": "Bearer sk-wrong"})
    for reply in (missing, wrong):
        assert reply.status_code == 401
        body = reply.json()
        assert (body["error"]["code"] if path.startswith("/v1/") else body["code"]) == "InvalidApiKey"


def test_openai_sdk_lists_and_retrieves_the_served_names(openai_client, served):
    listed = list(openai_client.models.list())
    assert [model.id for model in listed] == served
    assert {(model.object, model.owned_by) for model in listed} == {("model", "qwen")}
    [created] = {model.created for model in listed}
    assert 0 < created <= time.time()
    retrieved = openai_client.models.retrieve("qwen-image-edit-plus")
    assert (retrieved.id, retrieved.created, retrieved.owned_by) == ("qwen-image-edit-plus", created, "qwen")


def test_openai_sdk_unknown_model_is_model_not_found(openai_client):
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.models.retrieve("gpt-image-1")
    assert caught.value.code == "model_not_found" and caught.value.type == "not_found_error"
    assert "gpt-image-1" in caught.value.message
