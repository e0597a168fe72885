"""api/errors.py: one error, rendered in the shape of the surface its path belongs to."""

from __future__ import annotations

import json

import pytest

from qwen_image_server.api.errors import error_response


def body(response) -> dict:
    return json.loads(response.body)


def test_dashscope_paths_answer_the_hosted_shape():
    response = error_response("rid", 400, "InvalidParameter", "bad", path="/api/v1/tasks", param="size")
    assert body(response) == {"request_id": "rid", "code": "InvalidParameter", "message": "bad"}
    assert response.headers["x-request-id"] == "rid"


@pytest.mark.parametrize("status, error_type", [
    (400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
    (413, "invalid_request_error"), (429, "rate_limit_error"), (500, "server_error"), (503, "server_error")])
def test_openai_paths_answer_openai_shape(status, error_type):
    response = error_response("rid", status, "Code", "message", {"Retry-After": "2"}, "/v1/images/edits", "mask")
    assert body(response) == {"error": {"message": "message", "type": error_type, "param": "mask", "code": "Code"}}
    assert response.status_code == status and response.headers["retry-after"] == "2"


def test_openai_paths_use_openais_own_code_where_it_has_one():
    openai = error_response("rid", 404, "ModelNotFound", "no such model", path="/v1/models/x")
    hosted = error_response("rid", 404, "ModelNotFound", "no such model", path="/api/v1/uploads")
    assert body(openai)["error"]["code"] == "model_not_found"
    assert body(hosted)["code"] == "ModelNotFound"
