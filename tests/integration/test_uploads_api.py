"""The upload endpoints over raw HTTP, as curl users and hostile clients see them."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from qwen_image_server.keys import KeyStore
from tests.conftest import png_bytes
from tests.integration.tasks_api import wait_for

EDIT_MODEL = "qwen-image-edit-plus"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
RESOLVE = {"X-DashScope-OssResourceResolve": "enable"}


def policy(server, model: str = EDIT_MODEL, key: str | None = None) -> dict:
    reply = httpx.get(f"{server.url}/api/v1/uploads", params={"action": "getPolicy", "model": model},
                      headers={"Authorization": f"Bearer {key or server.key}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    return reply.json()["data"]


def form(data: dict, name: str = "input.png", **changes: str) -> dict[str, str]:
    fields = {"OSSAccessKeyId": data["oss_access_key_id"], "Signature": data["signature"], "policy": data["policy"],
              "key": f"{data['upload_dir']}/{name}", "x-oss-object-acl": data["x_oss_object_acl"],
              "x-oss-forbid-overwrite": data["x_oss_forbid_overwrite"], "success_action_status": "200",
              "x-oss-content-type": "image/png"}
    return {**fields, **changes}


def post_upload(data: dict, body: bytes, **changes: str) -> httpx.Response:
    fields = form(data, **changes)
    return httpx.post(data["upload_host"], data=fields, files={"file": (fields["key"].rsplit("/", 1)[1], body)},
                      timeout=30)


def uploaded(server, size=(512, 512), model: str = EDIT_MODEL, key: str | None = None) -> str:
    reply = post_upload(policy(server, model, key), png_bytes(size))
    assert reply.status_code == 200, reply.text
    return reply.json()["url"]


def edit(server, reference: str, headers: dict[str, str] | None = None, model: str = EDIT_MODEL,
         key: str | None = None) -> httpx.Response:
    body = {"model": model, "input": {"messages": [{"role": "user", "content": [
        {"image": reference}, {"text": "make it blue"}]}]}, "parameters": {"size": "512*512", "prompt_extend": False}}
    return httpx.post(f"{server.url}{GENERATION}", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key or server.key}", **(headers or {})})


def assert_error(reply: httpx.Response, status: int, code: str, message: str = "") -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["code"] == code and body["request_id"] and message in body["message"], body


def test_get_policy_has_what_the_sdk_reads_and_points_at_us(server):
    data = policy(server)
    assert data["upload_host"] == f"{server.url}/api/v1/uploads"
    assert data["upload_dir"].startswith("dashscope-instant/")
    assert (data["x_oss_object_acl"], data["x_oss_forbid_overwrite"]) == ("private", "true")
    assert data["expire_in_seconds"] == 300 and data["max_file_size_mb"] >= 1
    document = json.loads(base64.b64decode(data["policy"]))
    assert ["starts-with", "$key", data["upload_dir"] + "/"] in document["conditions"]


@pytest.mark.parametrize(("params", "status", "code"), [
    ({"action": "getPolicy", "model": "no-such-model"}, 404, "ModelNotFound"),
    ({"action": "list", "model": EDIT_MODEL}, 400, "InvalidParameter"),
    ({"action": "getPolicy"}, 400, "InvalidParameter"),
])
def test_bad_policy_requests_are_refused(server, params, status, code):
    reply = httpx.get(f"{server.url}/api/v1/uploads", params=params, timeout=30,
                      headers={"Authorization": f"Bearer {server.key}"})
    assert_error(reply, status, code)


def test_get_policy_needs_a_key(server):
    reply = httpx.get(f"{server.url}/api/v1/uploads", params={"action": "getPolicy", "model": EDIT_MODEL})
    assert_error(reply, 401, "InvalidApiKey")


@pytest.mark.parametrize(("changes", "message"), [
    ({"Signature": base64.b64encode(b"0" * 32).decode()}, "signature"),
    ({"key": "dashscope-instant/elsewhere/input.png"}, "inside upload_dir"),
    ({"x-oss-object-acl": "public-read"}, "x-oss-object-acl"),
])
def test_uploads_outside_the_policy_are_refused(server, changes, message):
    data = policy(server)
    fields = form(data, **changes)
    reply = httpx.post(data["upload_host"], data=fields, files={"file": ("input.png", png_bytes((64, 64)))})
    assert_error(reply, 403, "AccessDenied", message)


def test_a_traversing_key_is_refused(server):
    data = policy(server)
    reply = post_upload(data, png_bytes((64, 64)), key=f"{data['upload_dir']}/../../etc/passwd")
    assert_error(reply, 403, "AccessDenied")


def test_uploaded_bytes_must_be_an_image_within_limits(server):
    assert_error(post_upload(policy(server), b"#!/bin/sh\necho not an image\n"), 400, "InvalidParameter",
                 "format")
    too_many_pixels = png_bytes((5000, 10))
    assert_error(post_upload(policy(server), too_many_pixels), 400, "InvalidParameter", "5000x10")


def test_an_upload_without_a_file_part_is_a_400(server):
    data = policy(server)
    assert_error(httpx.post(data["upload_host"], data=form(data)), 400, "InvalidParameter", "file")


def test_oss_reference_needs_the_resolve_header(server):
    reply = edit(server, uploaded(server))
    assert_error(reply, 400, "InvalidParameter", "X-DashScope-OssResourceResolve: enable")


def test_oss_reference_is_bound_to_the_uploading_key(server):
    other = KeyStore(server.settings.database_path).create("other")
    reply = edit(server, uploaded(server), RESOLVE, key=other)
    assert_error(reply, 400, "InvalidParameter", "does not exist or has expired")


def test_oss_reference_is_bound_to_the_model_named_in_get_policy(server):
    reply = edit(server, uploaded(server, model="qwen-image-2.0"), RESOLVE)
    assert_error(reply, 400, "InvalidParameter", "uploaded for model qwen-image-2.0")


def test_unknown_oss_reference_is_a_clear_400(server):
    reply = edit(server, "oss://dashscope-instant/nothing/here.png", RESOLVE)
    assert_error(reply, 400, "InvalidParameter", "does not exist")


def test_curl_flow_upload_then_edit_as_a_task(server):
    reply = edit(server, uploaded(server, size=(640, 384)), {**RESOLVE, "X-DashScope-Async": "enable"})
    assert reply.status_code == 200, reply.text
    with server.client() as client:
        done = wait_for(client, reply.json()["output"]["task_id"], {"SUCCEEDED", "FAILED"})
    assert done["output"]["task_status"] == "SUCCEEDED", done
    assert (done["usage"]["width"], done["usage"]["height"]) == (512, 512)


def test_revoking_a_key_stops_its_upload_policies_at_once(server):
    store = KeyStore(server.settings.database_path)
    key = store.create("soon revoked")
    data = policy(server, key=key)
    assert store.revoke(store.verify(key))
    assert_error(post_upload(data, png_bytes((64, 64))), 403, "AccessDenied", "revoked")
    reply = httpx.get(f"{server.url}/api/v1/uploads", params={"action": "getPolicy", "model": EDIT_MODEL},
                      headers={"Authorization": f"Bearer {key}"})
    assert_error(reply, 401, "InvalidApiKey", "Invalid API-key")
