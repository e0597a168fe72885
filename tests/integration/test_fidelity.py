"""The edges a strict client or a 2026 user meets: trailing slashes, SDK 2.0's job list, ``task_metric``, the
hosted input sizes, the 2.1 and 3.0 names, licences, and Model Studio's OpenAI-compatible base path."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
from pathlib import Path

import dashscope
import httpx
import openai
import pytest
from dashscope import ImageSynthesis, MultiModalConversation
from PIL import Image

from qwen_image_server.app import warn_of_non_commercial_weights
from qwen_image_server.engine.registry import load_registry
from tests.conftest import free_socket, png_bytes, serving
from tests.integration.tasks_api import submit_and_wait

pytestmark = pytest.mark.usefixtures("sdk_at_server")

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
MODEL = "qwen-image-2.0"


def raw(server, method: str, path: str, payload: dict | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request over a bare connection: no client library that might follow a redirect for us."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=120)
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    connection.request(method, path, body=json.dumps(payload) if payload is not None else None, headers=headers)
    response = connection.getresponse()
    answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return answer


def generation(content: list[dict], model: str = MODEL, **parameters) -> dict:
    return {"model": model, "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": {"prompt_extend": False, **parameters}}


def data_uri(size: tuple[int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(size)).decode()


def test_trailing_slashes_are_answered_directly_never_redirected(server):
    with server.client() as client:
        task_id = submit_and_wait(client)
    for path in (f"/api/v1/tasks/{task_id}/", f"/api/v1/tasks/{task_id}//?junk=1&x", "/api/v1/tasks/?page_size=1"):
        status, headers, payload = raw(server, "GET", path)
        assert status == 200 and "location" not in headers, (path, status)
        assert json.loads(payload)["request_id"]
    status, _headers, payload = raw(server, "POST", ROUTE + "/", generation([{"text": "a kite"}], size="512*512"))
    assert status == 200 and json.loads(payload)["output"]["choices"]


def test_both_sdks_parse_the_task_list(server):
    with server.client() as client:
        task_id = submit_and_wait(client, prompt="listed for both")
    legacy = ImageSynthesis.list(api_key=server.key, model_name=MODEL, page_size=100)
    assert task_id in [row["task_id"] for row in legacy.output["data"]]
    jobs = dashscope.Client(api_key=server.key, base_url=f"{server.url}/api/v1").images.jobs.list(
        model_name=MODEL, page_size=100)
    listed = {job.task_id: job for job in jobs.tasks}
    assert listed[task_id].status == "SUCCEEDED" and listed[task_id].finished_at
    assert jobs.total == legacy.output["total"] and len(jobs.tasks) == len(legacy.output["data"])


def test_sync_answers_carry_the_task_metric(server):
    response = MultiModalConversation.call(api_key=server.key, model=MODEL, messages=[
        {"role": "user", "content": [{"text": "two kites"}]}], n=2, size="512*512", prompt_extend=False)
    assert response.status_code == 200
    assert response.output["task_metric"] == {"TOTAL": 2, "SUCCEEDED": 2, "FAILED": 0}


@pytest.fixture(scope="module")
def hosted_inputs(tmp_path_factory, demo_models_dir):
    """A server with the hosted API's input rules (each side 384-3072 px), the defaults."""
    with serving(tmp_path_factory.mktemp("hosted-inputs"), demo_models_dir, free_socket(),
                 enabled_models=[MODEL, "qwen-image-2.1-pro"], rate_limits_enabled=False) as running:
        yield running


@pytest.mark.parametrize(("size", "accepted"), [((384, 384), True), ((3072, 384), True), ((383, 512), False),
                                                ((512, 3073), False)])
def test_each_input_side_must_be_within_the_hosted_range(hosted_inputs, size, accepted):
    with hosted_inputs.client() as client:
        answer = client.post(ROUTE, json=generation([{"image": data_uri(size)}, {"text": "x"}], size="512*512"))
    if accepted:
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400 and answer.json()["code"] == "InvalidParameter"
        assert "The image resolution is invalid" in answer.json()["message"] and "[384, 3072]" in answer.json()[
            "message"]


def test_the_readmes_curl_example_is_valid(hosted_inputs):
    readme = Path("README.md").read_text()
    example = readme.split("curl -s http://127.0.0.1:8000", 1)[1].split("-d '", 1)[1].split("'\n", 1)[0]
    payload = json.loads(example)
    payload["model"] = MODEL
    payload["parameters"]["size"] = "512*512"
    with hosted_inputs.client() as client:
        assert client.post(ROUTE, json=payload).status_code == 200


def test_qwen_image_21_pro_takes_up_to_ten_images_and_ignores_a_negative_prompt(hosted_inputs):
    images = [{"image": data_uri((384, 384))} for _ in range(5)]
    with hosted_inputs.client() as client:
        five = client.post(ROUTE, json=generation([*images, {"text": "all five"}], model="qwen-image-2.1-pro",
                                                  size="512*512", negative_prompt="blurry"))
        eleven = client.post(ROUTE, json=generation([*images * 2, images[0], {"text": "too many"}],
                                                    model="qwen-image-2.1-pro"))
        tall = client.post(ROUTE, json=generation([{"text": "a tower"}], model="qwen-image-2.1-pro",
                                                  size="256*2304"))
    assert five.status_code == 200, five.text
    assert eleven.status_code == 400 and "0 to 10" in eleven.json()["message"]
    assert tall.status_code == 400 and "aspect ratio" in tall.json()["message"]


def test_the_30_names_say_how_to_serve_them_and_work_once_aliased(server, tmp_path, demo_models_dir):
    with server.client() as client:
        answer = client.post(ROUTE, json=generation([{"text": "x"}], model="qwen-image-3.0-pro"))
    assert answer.status_code == 404 and answer.json()["code"] == "ModelNotFound"
    assert "--alias qwen-image-3.0-pro=qwen-image-2.1-pro" in answer.json()["message"]
    with serving(tmp_path, demo_models_dir, free_socket(), enabled_models=["qwen-image-3.0", "qwen-image-3.0-pro"],
                 model_aliases={"qwen-image-3.0": "qwen-image-2.1-pro", "qwen-image-3.0-pro": "qwen-image-2.1-pro"},
                 rate_limits_enabled=False) as aliased, aliased.client() as client:
        made = client.post(ROUTE, json=generation([{"text": "x"}], model="qwen-image-3.0", size="512*512"))
        four = client.post(ROUTE, json=generation([*[{"image": data_uri((384, 384))}] * 4, {"text": "x"}],
                                                  model="qwen-image-3.0-pro"))
    assert made.status_code == 200, made.text
    assert four.status_code == 400 and "0 to 3" in four.json()["message"], "3.0's own rules: 1-3 images"


def test_the_models_list_names_each_weights_licence(server):
    with server.client() as client:
        models = client.get("/api/v1/models", params={"page_size": 100}).json()["output"]["models"]
    assert all(model["license"] and isinstance(model["commercial_use"], bool) for model in models)


def test_non_commercial_weights_are_named_at_start(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        warn_of_non_commercial_weights(load_registry("real", tmp_path, None, None))
    line = caplog.records[-1].getMessage()
    assert "NON-COMMERCIAL" in line and "qwen-image-2.0" in line and "qwen-image-2.1-pro" in line
    assert "qwen-image-edit-plus" not in line and "--preset apache" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_of_non_commercial_weights(load_registry("apache", tmp_path, None, None))
    assert not caplog.records


def test_the_openai_surface_under_the_compatible_mode_base_path(server):
    with openai.OpenAI(base_url=server.url + "/compatible-mode/v1", api_key=server.key, max_retries=0,
                       timeout=300) as client:
        generated = client.images.generate(model=MODEL, prompt="a kite", size="512x512", response_format="b64_json")
        assert Image.open(io.BytesIO(base64.b64decode(generated.data[0].b64_json))).size == (512, 512)
        assert MODEL in [model.id for model in client.models.list()]
        with pytest.raises(openai.NotFoundError) as missing:
            client.images.generate(model="no-such-model", prompt="x")
    assert missing.value.code == "model_not_found"
    assert httpx.get(server.url + "/compatible-mode/v1/models").json()["error"]["code"] == "InvalidApiKey"
