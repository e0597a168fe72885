"""The data directory of a running server is its user's alone, and a link planted in it leads nowhere."""

from __future__ import annotations

import os
import stat
from urllib.parse import urlsplit

import httpx

ROUTE = "/api/v1/services/aigc/multimodal-generation/generation"


def test_the_data_directory_and_its_files_are_private(server):
    data_dir = server.settings.data_dir
    for directory in (data_dir, data_dir / "results", data_dir / "uploads"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for file in [*data_dir.glob("server.db*"), data_dir / "url-signing.key", *(data_dir / "results").iterdir()]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file


def test_a_link_planted_in_the_results_is_not_served(server, tmp_path):
    body = {"model": "qwen-image-2.0", "input": {"messages": [{"role": "user", "content": [{"text": "a lamp"}]}]},
            "parameters": {"size": "512*512", "prompt_extend": False}}
    with server.client() as client:
        url = client.post(ROUTE, json=body).json()["output"]["choices"][0]["message"]["content"][0]["image"]
        result = server.settings.data_dir / "results" / urlsplit(url).path.rsplit("/", 1)[1]
        secret = tmp_path / "not-a-result.txt"
        secret.write_text("private")
        result.unlink()
        os.symlink(secret, result)
        answer = httpx.get(url)
    assert answer.status_code == 404 and "private" not in answer.text
