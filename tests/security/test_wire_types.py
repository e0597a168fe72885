"""What JSON allows but a request cannot mean, against the real server: every case is a clear 400 in the API's
own format, never a 500 that SDKs retry; and a prompt of any length costs a bounded amount."""

from __future__ import annotations

import pytest

from tests.integration.tasks_api import ASYNC, MULTIMODAL, SYNTHESIS, wait_for

MODEL = "qwen-image-2.0"


def body(text: str = '"a lamp"', parameters: str = '{"size": "512*512"}') -> bytes:
    return (f'{{"model": "{MODEL}", "input": {{"messages": [{{"role": "user", "content": [{{"text": {text}}}]}}]}}, '
            f'"parameters": {parameters}}}').encode()


@pytest.mark.parametrize(("payload", "where"), [
    (body(text='"\\ud800"'), "body"),
    (body(text='"lamp \\udc00 light"'), "body"),
    (body(parameters='{"n": true}'), "parameters.n"),
    (body(parameters='{"seed": true}'), "parameters.seed"),
    (body(parameters='{"n": 1.5}'), "parameters.n"),
    (body(parameters='{"size": "\\uff15\\uff11\\uff12*512"}'), "size"),
    (body(parameters='{"size": "\\u0665\\u0661\\u0662*512"}'), "size"),
    (body(parameters='{"size": "512*512\\n"}'), "size"),
    (b"not json at all", "body"),
    (b'{"model": "' + b"\xff\xfe" + b'"}', "body"),
])
def test_impossible_values_are_a_clear_400(server, payload, where):
    with server.client() as client:
        answer = client.post(MULTIMODAL, content=payload, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["code"] == "InvalidParameter" and error["request_id"]
    assert where.split(".")[-1] in error["message"] or where == "body"


def test_a_huge_prompt_is_cut_before_it_is_stored_or_tokenized(server):
    prompt = "a lighthouse at dusk, " * 300_000  # 6.6 MB
    with server.client() as client:
        answer = client.post(SYNTHESIS, headers=ASYNC, json={
            "model": MODEL, "input": {"prompt": prompt, "negative_prompt": "blur " * 10_000},
            "parameters": {"size": "512*512", "prompt_extend": False}})
        assert answer.status_code == 200, answer.text
        task = wait_for(client, answer.json()["output"]["task_id"], {"SUCCEEDED"})
        listed = client.get("/api/v1/tasks", params={"page_size": 100})
    stored = task["output"]["results"][0]["orig_prompt"]
    assert stored == prompt[:1300 * 8]
    assert len(task["output"]["results"][0]["url"]) < 500
    assert listed.status_code == 200 and len(listed.content) < 100_000
