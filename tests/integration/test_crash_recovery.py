"""``kill -9`` of a real server process mid-task, then a restart on the same data: every accepted task completes
once, none stays RUNNING, and no result is written twice."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid

import httpx
import pytest

from bench.servers import free_port, wait_until_ready
from qwen_image_server.keys import KeyStore
from tests.conftest import READY_TIMEOUT_SECONDS
from tests.integration.tasks_api import MODEL, submit, task, wait_for

LEASE_SECONDS = 3


def start(data_dir, demo_models_dir, port, log):
    environment = {**os.environ, "QIS_DEMO_MODELS_DIR": str(demo_models_dir), "QIS_RATE_LIMITS_ENABLED": "false",
                   "QIS_TASK_LEASE_SECONDS": str(LEASE_SECONDS)}
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(port), "--data-dir", str(data_dir),
               "--models", MODEL]
    process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    wait_until_ready(f"http://127.0.0.1:{port}", process, READY_TIMEOUT_SECONDS)
    return process


def rows(data_dir):
    with sqlite3.connect(data_dir / "server.db") as db:
        return {task_id: (state, attempt) for task_id, state, attempt in
                db.execute("SELECT task_id, state, attempt FROM tasks")}


@pytest.fixture
def port():
    return free_port()


def test_tasks_accepted_before_sigkill_complete_after_restart(tmp_path, demo_models_dir, port):
    data_dir = tmp_path / "data"
    key = KeyStore(data_dir / "server.db").create("crash")
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "server.log", "ab") as log:
        server = start(data_dir, demo_models_dir, port, log)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                interrupted = submit(client, prompt="interrupted", size="1536*1536")
                queued = [submit(client, prompt=f"queued {i}") for i in range(2)]
                wait_for(client, interrupted, {"RUNNING"})
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=30)
        assert rows(data_dir)[interrupted] == ("RUNNING", 1)
        assert {rows(data_dir)[task_id][0] for task_id in queued} == {"PENDING"}

        server = start(data_dir, demo_models_dir, port, log)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                finished = {task_id: wait_for(client, task_id, {"SUCCEEDED", "FAILED"}, timeout=180)["output"]
                            for task_id in [interrupted, *queued]}
                assert {output["task_status"] for output in finished.values()} == {"SUCCEEDED"}
                for output in finished.values():
                    assert httpx.get(output["results"][0]["url"]).status_code == 200
                assert task(client, str(uuid.uuid4()))["output"]["task_status"] == "UNKNOWN"
        finally:
            server.terminate()
            server.wait(timeout=60)

    states = rows(data_dir)
    assert states[interrupted] == ("SUCCEEDED", 2), "re-run once, after its lease expired"
    assert all(states[task_id] == ("SUCCEEDED", 1) for task_id in queued), "queued tasks ran exactly once"
    assert not [row for row in states.values() if row[0] in ("RUNNING", "PENDING")]
    results = sorted(path.name for path in (data_dir / "results").iterdir())
    assert results == sorted(f"{uuid.UUID(task_id).hex}-0.png" for task_id in [interrupted, *queued])
