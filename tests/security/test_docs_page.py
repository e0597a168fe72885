"""The API docs page shares its origin with the playground's stored key: off by default, and when on, no
third-party script but one pinned release checked by Subresource Integrity, under a strict CSP."""

from __future__ import annotations

import httpx

from qwen_image_server.api.docs import SWAGGER_CSS_INTEGRITY, SWAGGER_JS_INTEGRITY
from tests.conftest import free_socket, serving


def test_docs_are_off_by_default_and_the_schema_is_served(server):
    for path in ("/docs", "/redoc", "/docs/start.js"):
        assert httpx.get(server.url + path).status_code == 404, path
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "qwen-image-server"


def test_docs_when_enabled_load_only_pinned_checked_script_under_a_strict_policy(tmp_path, demo_models_dir):
    with serving(tmp_path, demo_models_dir, free_socket(), enabled_models=["qwen-image-2.0"], api_docs=True) as on:
        page = httpx.get(on.url + "/docs")
        start = httpx.get(on.url + "/docs/start.js")
        redoc = httpx.get(on.url + "/redoc")
    assert page.status_code == 200 and start.status_code == 200 and redoc.status_code == 404
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self' https://cdn.jsdelivr.net;" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    assert f'integrity="{SWAGGER_JS_INTEGRITY}"' in page.text and f'integrity="{SWAGGER_CSS_INTEGRITY}"' in page.text
    assert "swagger-ui-dist@5.36.0/" in page.text and "<script>" not in page.text, "no inline script"
    assert start.headers["content-type"].startswith("text/javascript")
