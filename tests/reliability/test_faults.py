"""Faults one at a time, on a real server with the tiny demo models: the results directory read-only or full,
an out-of-memory error inside the pipeline, and SIGTERM with a task running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from bench.processes import ServerProcess, environment_settings
from qwen_image_server.keys import KeyStore
from tests.conftest import free_socket, serving
from tests.integration.tasks_api import MODEL, MULTIMODAL, submit, wait_for

OOM_SIZE = "640*640"  # the marked requests: the hook below fails every pipeline call over 512*512's latents
LATENT_TOKENS_512 = (512 // 16) ** 2
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the signal once its shutdown is complete


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_models_dir):
    with serving(tmp_path_factory.mktemp("faults"), demo_models_dir, free_socket(), enabled_models=[MODEL],
                 rate_limits_enabled=False, max_batch_size=1) as running:
        yield running


def sync_generation(client, size="512*512"):
    return client.post(MULTIMODAL, json={
        "model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "a lamp"}]}]},
        "parameters": {"size": size, "prompt_extend": False}})


def can(command: list[str]) -> bool:
    return shutil.which(command[0]) is not None and subprocess.run(command, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """chmod for an ordinary user; root ignores modes, so there the immutable attribute (chattr +i)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if not can(["chattr", "+i", str(directory)]):
        pytest.skip("running as root where chattr +i is not available: no way to make a directory read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@contextlib.contextmanager
def full(directory: Path) -> Iterator[None]:
    """A 64 KiB tmpfs mounted over the directory: a 512*512 PNG of the demo model's noise does not fit."""
    if not can(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(directory)]):
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): ENOSPC not simulated")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize(("fault", "cause"), [(read_only, ("Operation not permitted", "Permission denied")),
                                               (full, ("No space left on device",))], ids=["read-only", "full"])
def test_an_unwritable_results_directory_fails_the_task_with_the_cause_and_the_api_keeps_serving(
        server, fault, cause):
    with server.client() as client, fault(server.settings.results_dir):
        failed = wait_for(client, submit(client, prompt="no room"), {"SUCCEEDED", "FAILED"})["output"]
        assert failed["task_status"] == "FAILED" and failed["code"] == "InternalError.Upload"
        assert failed["message"].startswith("Failed to store the result image: ")
        assert failed["message"].removeprefix("Failed to store the result image: ").rstrip(".") in cause
        assert str(server.settings.data_dir) not in failed["message"], "no server paths in messages"
        answer = sync_generation(client)
        assert answer.status_code == 500 and answer.json()["code"] == "InternalError.Upload", answer.text
        assert answer.json()["request_id"]
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get(f"/api/v1/tasks/{failed['task_id']}").status_code == 200
    with server.client() as client:
        again = wait_for(client, submit(client, prompt="room again"), {"SUCCEEDED", "FAILED"})["output"]
        assert again["task_status"] == "SUCCEEDED"
        assert httpx.get(again["results"][0]["url"]).status_code == 200


def test_out_of_memory_in_the_pipeline_fails_that_task_and_the_next_one_runs(server):
    engine = server.app.state.runners[0].engine
    transformer = engine.pipeline(server.app.state.registry.get(MODEL).plan).transformer
    raised = []

    def out_of_memory_on_marked_sizes(_module, args, kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        if hidden_states.shape[1] > LATENT_TOKENS_512:
            raised.append(hidden_states.shape)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    hook = transformer.register_forward_pre_hook(out_of_memory_on_marked_sizes, with_kwargs=True)
    try:
        with server.client() as client:
            marked = submit(client, prompt="too big", size=OOM_SIZE)
            following = submit(client, prompt="fits")
            failed = wait_for(client, marked, {"SUCCEEDED", "FAILED"})["output"]
            assert failed["task_status"] == "FAILED" and failed["code"] == "InternalError.Algo"
            assert "out of device memory" in failed["message"], "the OOM branch ran, cache clearing included"
            assert wait_for(client, following, {"SUCCEEDED", "FAILED"})["output"]["task_status"] == "SUCCEEDED"
            answer = sync_generation(client, size=OOM_SIZE)
            assert answer.status_code == 500 and answer.json()["code"] == "InternalError.Algo", answer.text
            assert sync_generation(client).status_code == 200
    finally:
        hook.remove()
    assert len(raised) == 2


def test_sigterm_stops_accepting_and_hands_the_running_task_back_without_spending_an_attempt(
        tmp_path, demo_models_dir):
    data_dir = tmp_path / "data"
    key = KeyStore(data_dir / "server.db").create("sigterm")
    process = ServerProcess(data_dir, demo_models_dir, tmp_path / "server.log", environment_settings(
        task_lease_seconds=30, task_poll_seconds=0.2))
    process.start()
    try:
        with process.client(key) as client:
            running = submit(client, prompt="interrupted by SIGTERM", size="1024*1024")
            wait_for(client, running, {"RUNNING"})
        signalled = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        refused = None
        while process.alive() and refused is None:
            try:
                httpx.get(f"{process.url}/healthz", timeout=1)
            except httpx.ConnectError:
                refused = time.monotonic() - signalled
            time.sleep(0.05)
        assert process.stop(signal.SIGTERM, timeout_seconds=120) in CLEAN_EXIT, process.log_tail()
        assert "Application shutdown complete" in process.log_tail()
        assert refused is None or refused < 2, "the listening socket closes at once"
        with sqlite3.connect(data_dir / "server.db") as db:
            state, attempt, worker = db.execute("SELECT state, attempt, worker FROM tasks WHERE task_id = ?",
                                                (running,)).fetchone()
        assert (state, attempt, worker) == ("PENDING", 0, None), "handed back, its attempt not spent"

        process.start()
        with process.client(key) as client:
            finished = wait_for(client, running, {"SUCCEEDED", "FAILED"}, timeout=180)["output"]
        assert finished["task_status"] == "SUCCEEDED"
        process.stop(signal.SIGTERM)
        with sqlite3.connect(data_dir / "server.db") as db:
            assert db.execute("SELECT attempt FROM tasks WHERE task_id = ?", (running,)).fetchone() == (1,)
    finally:
        if process.alive():
            process.stop(signal.SIGKILL)


def test_an_in_flight_sync_request_is_answered_before_a_sigterm_exit(tmp_path, demo_models_dir):
    data_dir = tmp_path / "data"
    key = KeyStore(data_dir / "server.db").create("sigterm-sync")
    process = ServerProcess(data_dir, demo_models_dir, tmp_path / "server.log",
                            environment_settings(task_poll_seconds=0.2))
    process.start()
    answers = []
    try:
        with process.client(key, timeout=120) as client:
            waiting = threading.Thread(target=lambda: answers.append(sync_generation(client, size="1024*1024")))
            waiting.start()
            database = sqlite3.connect(data_dir / "server.db")
            deadline = time.monotonic() + 60
            while not database.execute("SELECT 1 FROM tasks WHERE state = 'RUNNING'").fetchone():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            database.close()
            assert process.stop(signal.SIGTERM, timeout_seconds=120) in CLEAN_EXIT
            waiting.join(timeout=10)
        assert [answer.status_code for answer in answers] == [200], answers and answers[0].text
    finally:
        if process.alive():
            process.stop(signal.SIGKILL)
