"""Every rejection of the spec's tables that applies: status, code, and the hosted error shape.

None of these reach the engine, so they are fast.
"""

from __future__ import annotations

import base64

import pytest

from tests.conftest import png_bytes

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"


def body(content, model="qwen-image-edit-plus", **parameters):
    return {"model": model, "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": parameters}


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def image(image_host):
    return image_host.add("reject.png", png_bytes((512, 512)))


def expect(response, status, code, message_part=""):
    payload = response.json()
    assert response.status_code == status, payload
    assert set(payload) == {"request_id", "code", "message"}
    assert payload["code"] == code
    assert message_part.lower() in payload["message"].lower()
    assert response.headers["x-request-id"] == payload["request_id"]
    assert response.headers["content-type"].startswith("application/json")


def test_missing_text(client, image):
    expect(client.post(ROUTE, json=body([{"image": image}])), 400, "InvalidParameter", "text")


def test_two_texts(client, image):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}, {"text": "b"}])),
           400, "InvalidParameter", "exactly one")


def test_too_many_images(client, image):
    expect(client.post(ROUTE, json=body([{"image": image}] * 4 + [{"text": "a"}])),
           400, "InvalidParameter", "1 to 3")


def test_images_given_to_a_text_to_image_model(client, image):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}], model="qwen-image-max")),
           400, "InvalidParameter", "text only")


def test_no_image_for_an_edit_model(client):
    expect(client.post(ROUTE, json=body([{"text": "a"}])), 400, "InvalidParameter", "1 to 3")


@pytest.mark.parametrize("n", [0, 7, -1])
def test_n_out_of_range(client, image, n):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}], n=n)), 400, "InvalidParameter", "n")


def test_n_fixed_at_one(client):
    expect(client.post(ROUTE, json=body([{"text": "a"}], model="qwen-image-max", n=2)),
           400, "InvalidParameter", "num_images_per_prompt must be 1")


@pytest.mark.parametrize("size", ["big", "1024x1024", "100*100", "4000*1024"])
def test_bad_size(client, image, size):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}], size=size)),
           400, "InvalidParameter", "size")


def test_size_not_in_the_fixed_list(client):
    expect(client.post(ROUTE, json=body([{"text": "a"}], model="qwen-image", size="1024*1024")),
           400, "InvalidParameter", "one of")


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_seed_out_of_range(client, image, seed):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}], seed=seed)),
           400, "InvalidParameter", "seed")


def test_wrong_parameter_type(client, image):
    expect(client.post(ROUTE, json=body([{"image": image}, {"text": "a"}], n="many")),
           400, "InvalidParameter", "parameters.n")


def test_unknown_model(client):
    expect(client.post(ROUTE, json=body([{"text": "a"}], model="wanx-v1")), 404, "ModelNotFound")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer sk-wrong", "Basic abc", "sk-no-scheme"])
def test_bad_key_gets_one_answer(server, header):
    import httpx

    headers = {} if header is None else {"Authorization": header}
    response = httpx.post(server.url + ROUTE, json=body([{"text": "a"}]), headers=headers)
    expect(response, 401, "InvalidApiKey", "Invalid API-key provided.")


def test_two_messages(client, image):
    message = {"role": "user", "content": [{"image": image}, {"text": "a"}]}
    payload = {"model": "qwen-image-edit-plus", "input": {"messages": [message, message]}}
    expect(client.post(ROUTE, json=payload), 400, "InvalidParameter", "messages length only supports 1")


def test_no_messages(client):
    expect(client.post(ROUTE, json={"model": "qwen-image-plus", "input": {}}),
           400, "InvalidParameter", "No messages found in input")


def test_assistant_role(client):
    payload = {"model": "qwen-image-plus",
               "input": {"messages": [{"role": "assistant", "content": [{"text": "a"}]}]}}
    expect(client.post(ROUTE, json=payload), 400, "InvalidParameter", "role")


def test_not_json(client):
    expect(client.post(ROUTE, content=b"{not json", headers={"Content-Type": "application/json"}),
           400, "InvalidParameter", "body")


def test_missing_model(client):
    expect(client.post(ROUTE, json={"input": {"messages": []}}), 400, "InvalidParameter", "model")


def test_body_over_the_cap(client, server):
    oversized = b"x" * (server.settings.max_request_bytes + 1)
    expect(client.post(ROUTE, content=oversized, headers={"Content-Type": "application/json"}),
           413, "BadRequest.TooLarge")


def test_non_image_bytes_in_a_data_uri(client):
    expect(client.post(ROUTE, json=body([{"image": data_uri(b"<html>hi</html>")}, {"text": "a"}])),
           400, "InvalidParameter", "image")


def test_non_image_bytes_at_a_url(client, image_host):
    url = image_host.add("page.html", b"<html><body>not an image</body></html>", "text/html")
    expect(client.post(ROUTE, json=body([{"image": url}, {"text": "a"}])), 400, "InvalidParameter")


def test_oversized_data_uri(client, server):
    blob = b"\0" * (server.settings.max_image_bytes + 1)
    expect(client.post(ROUTE, json=body([{"image": data_uri(blob)}, {"text": "a"}])),
           400, "InvalidParameter", "Exceeded limit on max bytes per data-uri item")


def test_oversized_download(client, server, image_host):
    url = image_host.add("huge.png", b"\x89PNG" + b"\0" * server.settings.max_image_bytes)
    expect(client.post(ROUTE, json=body([{"image": url}, {"text": "a"}])), 400, "InvalidParameter")


def test_too_many_pixels(client):
    expect(client.post(ROUTE, json=body([{"image": data_uri(png_bytes((5000, 4000)))}, {"text": "a"}])),
           400, "InvalidParameter")


def test_url_to_loopback_without_the_allowlist_makes_no_request(client, server):
    url = f"{server.url}/healthz"
    expect(client.post(ROUTE, json=body([{"image": url}, {"text": "a"}])), 400, "InvalidURL")


@pytest.mark.parametrize("source", ["file:///etc/passwd", "/etc/passwd", "ftp://example.com/a.png",
                                    "oss://bucket/key.png"])
def test_other_image_references(client, source):
    response = client.post(ROUTE, json=body([{"image": source}, {"text": "a"}]))
    assert response.status_code == 400
    assert response.json()["code"] in {"InvalidURL", "InvalidParameter"}


def test_unknown_route_and_method(client):
    expect(client.get("/api/v1/nothing-here"), 404, "NotFound")
    expect(client.get(ROUTE), 405, "MethodNotAllowed")
