"""Health, readiness, OpenAPI, result URLs, and unknown parameters, against the real server."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import png_bytes

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"


def test_health_ready_and_schema(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["status"] == "ready" and "qwen-image-edit-plus" in ready["models"]
    schema = httpx.get(server.url + "/openapi.json").json()
    assert ROUTE in schema["paths"]


def test_unknown_parameters_are_ignored_and_results_are_served_safely(server, image_host):
    url = image_host.add("extra.png", png_bytes((512, 512)))
    payload = {"model": "qwen-image-edit-plus",
               "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "a"}]}]},
               "parameters": {"size": "512*512", "prompt_extend": False, "result_format": "message",
                              "stream": False, "brand_new_option": {"x": 1}}}
    with server.client() as client:
        response = client.post(ROUTE, json=payload)
    assert response.status_code == 200, response.text
    result_url = response.json()["output"]["choices"][0]["message"]["content"][0]["image"]
    assert result_url.startswith(server.url + "/results/")

    got = httpx.get(result_url)
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-content-type-options"] == "nosniff"
    head = httpx.head(result_url)
    assert head.status_code == 200 and head.content == b""

    split = urlsplit(result_url)
    query = parse_qs(split.query)
    tampered_expiry = f"{split.scheme}://{split.netloc}{split.path}?Expires={int(query['Expires'][0]) + 1}" \
                      f"&Signature={query['Signature'][0]}"
    for bad in (tampered_expiry, f"{server.url}{split.path}", f"{server.url}/results/..%2Fserver.db?"
                f"Expires={query['Expires'][0]}&Signature={query['Signature'][0]}"):
        answer = httpx.get(bad)
        assert answer.status_code == 404 and answer.json()["code"] == "NotFound"


def test_inference_does_not_block_the_event_loop(server, image_host):
    import threading

    url = image_host.add("busy.png", png_bytes((512, 512)))
    payload = {"model": "qwen-image-edit-plus",
               "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "busy"}]}]},
               "parameters": {"size": "512*512", "prompt_extend": False}}
    outcome = {}

    def generate():
        with server.client() as client:
            outcome["status"] = client.post(ROUTE, json=payload).status_code

    worker = threading.Thread(target=generate)
    worker.start()
    answered_while_busy = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while worker.is_alive():
            assert client.get("/healthz").status_code == 200
            answered_while_busy += worker.is_alive()
    worker.join()
    assert outcome["status"] == 200
    assert answered_while_busy >= 3
