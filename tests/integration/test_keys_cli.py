"""``keys list`` and ``keys revoke`` on a running server's data directory: revocation takes effect at once."""

from __future__ import annotations

import httpx

from qwen_image_server.cli import main
from qwen_image_server.tasks.models import TaskState
from qwen_image_server.tasks.sqlite import SqliteTaskStore
from tests.integration.tasks_api import ASYNC, SYNTHESIS, wait_for


def cli(capsys, *arguments: str) -> tuple[int, str, str]:
    code = main(list(arguments))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_revoked_key_stops_at_once_and_its_pending_tasks_are_canceled(server, capsys):
    data_dir = str(server.settings.data_dir)
    code, key, _ = cli(capsys, "keys", "create", "--name", "to-revoke", "--data-dir", data_dir)
    key = key.strip()
    assert code == 0
    _, listed, _ = cli(capsys, "keys", "list", "--data-dir", data_dir)
    line = next(row for row in listed.splitlines() if "to-revoke" in row)
    key_id = line.split()[0]
    assert key not in listed and "revoked" not in line

    body = {"model": "qwen-image-2.0", "input": {"prompt": "queued"}, "parameters": {"size": "512*512"}}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        with server.app.state.runners[0].holding():
            running = client.post(SYNTHESIS, headers=ASYNC, json=body).json()["output"]["task_id"]
            wait_for(client, running, {"RUNNING"})
            pending = client.post(SYNTHESIS, headers=ASYNC, json=body).json()["output"]["task_id"]
            code, out, _ = cli(capsys, "keys", "revoke", key_id, "--data-dir", data_dir)
            assert (code, out.strip()) == (0, f"revoked {key_id}; 1 pending task(s) canceled")
            assert client.get(f"/api/v1/tasks/{running}").status_code == 401
        assert client.post(SYNTHESIS, headers=ASYNC, json=body).json()["code"] == "InvalidApiKey"
    store = SqliteTaskStore(server.settings.database_path)
    assert store.get(pending).state is TaskState.CANCELED
    _, listed, _ = cli(capsys, "keys", "list", "--data-dir", data_dir)
    assert "revoked" in next(row for row in listed.splitlines() if row.startswith(key_id))
    code, _, err = cli(capsys, "keys", "revoke", key_id, "--data-dir", data_dir)
    assert code == 1 and "no working key" in err
