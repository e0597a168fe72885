"""Server-sent events on the sync endpoints: the official SDKs' ``stream=True`` (dashscope sync and aio, openai)
and a strict SSE consumer (``httpx-sse``) against a real server on loopback."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import openai
import pytest
from dashscope import AioMultiModalConversation, MultiModalConversation
from dashscope.api_entities.aio_session import close_shared_aio_session
from httpx_sse import connect_sse
from PIL import Image

from qwen_image_server.api import streaming
from tests.conftest import png_bytes

pytestmark = pytest.mark.usefixtures("sdk_at_server")

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"
MODEL = "qwen-image-2.0"
TEXT = [{"text": "a lighthouse at dusk"}]


def body(model: str = MODEL, **parameters) -> dict:
    return {"model": model, "input": {"messages": [{"role": "user", "content": TEXT}]},
            "parameters": {"size": "512*512", "prompt_extend": False, **parameters}}


def test_the_sdks_stream_yields_the_final_answer(server):
    responses = list(MultiModalConversation.call(api_key=server.key, model=MODEL, messages=[
        {"role": "user", "content": TEXT}], stream=True, size="512*512", prompt_extend=False, n=2))
    assert len(responses) == 1
    [answer] = responses
    assert answer.status_code == 200 and answer.request_id
    urls = [item["image"] for item in answer.output.choices[0].message.content]
    assert len(urls) == 2 and all(httpx.get(url).status_code == 200 for url in urls)
    assert (answer.usage.width, answer.usage.height, answer.usage.image_count) == (512, 512, 2)


def test_the_aio_sdks_stream_yields_the_final_answer(server):
    async def stream() -> list:
        try:
            answers = await AioMultiModalConversation.call(api_key=server.key, model=MODEL, messages=[
                {"role": "user", "content": TEXT}], stream=True, size="512*512", prompt_extend=False)
            return [answer async for answer in answers]
        finally:  # the SDK pools connections in a session of its own, bound to this event loop
            await close_shared_aio_session()

    [answer] = asyncio.run(stream())
    assert answer.status_code == 200
    assert len(answer.output.choices[0].message.content) == 1


def test_the_sdk_reads_a_streamed_error_with_its_status(server):
    [answer] = list(MultiModalConversation.call(api_key=server.key, model="no-such-model", messages=[
        {"role": "user", "content": TEXT}], stream=True))
    assert (answer.status_code, answer.code) == (404, "ModelNotFound")
    [invalid] = list(MultiModalConversation.call(api_key=server.key, model=MODEL, messages=[
        {"role": "user", "content": TEXT}], stream=True, size="9*9"))
    assert (invalid.status_code, invalid.code) == (400, "InvalidParameter") and "size" in invalid.message


def sse_events(server, payload: dict, **headers: str) -> tuple[httpx.Response, list]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=120) as client, \
            connect_sse(client, "POST", ROUTE, json=payload, headers=headers) as source:
        return source.response, list(source.iter_sse())


@pytest.mark.parametrize("ask", [{"X-DashScope-SSE": "enable"}, {"Accept": "text/event-stream"}])
def test_a_strict_sse_consumer_parses_the_dashscope_framing(server, ask):
    response, events = sse_events(server, body(), **ask)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    [event] = events
    assert (event.id, event.event) == ("1", "result")
    answer = json.loads(event.data)
    assert answer["output"]["choices"][0]["message"]["content"][0]["image"].startswith(server.url)
    assert answer["output"]["task_metric"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert answer["request_id"] == response.headers["x-request-id"]


def test_errors_come_as_error_events_on_a_200_stream(server):
    for payload, code in [(body(model="no-such-model"), "ModelNotFound"), (body(n=99), "InvalidParameter"),
                          ({"model": MODEL, "input": {}}, "InvalidParameter")]:
        response, [event] = sse_events(server, payload, **{"X-DashScope-SSE": "enable"})
        assert response.status_code == 200 and event.event == "error"
        error = json.loads(event.data)
        assert error["code"] == code and error["message"] and error["request_id"]
    raw = httpx.post(server.url + ROUTE, json=body(model="no-such-model"), timeout=60, headers={
        "Authorization": f"Bearer {server.key}", "X-DashScope-SSE": "enable"}).text
    assert raw.startswith("id:1\nevent:error\n:HTTP_STATUS/404\nstatus:404\ndata:{")


def test_a_waiting_stream_sends_comments_that_parsers_skip(server, monkeypatch):
    monkeypatch.setattr(streaming, "HEARTBEAT_SECONDS", 0.05)
    with server.client() as client, server.app.state.runners[0].holding(), \
            client.stream("POST", ROUTE, json=body(), headers={"X-DashScope-SSE": "enable"}) as stream:
        assert next(stream.iter_lines()) == ": waiting"
    _response, [event] = sse_events(server, body(), **{"X-DashScope-SSE": "enable"})
    assert event.event == "result"


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=300)


def test_the_openai_sdks_image_stream(server):
    with openai_client(server) as client:
        events = list(client.images.generate(model=MODEL, prompt="a kite", size="512x512", n=2, stream=True))
        edited = list(client.images.edit(model=MODEL, prompt="bluer", stream=True, size="512x512",
                                         image=("in.png", png_bytes((512, 512)), "image/png")))
    assert [event.type for event in events] == ["image_generation.completed"] * 2
    assert Image.open(io.BytesIO(base64.b64decode(events[0].b64_json))).size == (512, 512)
    assert events[0].output_format == "png" and events[0].size == "512x512"
    assert [event.type for event in edited] == ["image_edit.completed"]
