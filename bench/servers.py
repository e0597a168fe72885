"""What the benchmarks share: server subprocesses on a free loopback port, with jemalloc preloaded where installed.

jemalloc (Debian's ``libjemalloc2``) keeps CPU inference time steady from one process to the next; see
``edit_latency.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
ENVIRONMENT = {**os.environ, **({"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": "dirty_decay_ms:5000,muzzy_decay_ms:5000"}
                                 if JEMALLOC.exists() else {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(url: str, process: subprocess.Popen | None, timeout_seconds: float,
                     describe: Callable[[], str] = lambda: "") -> None:
    """Polls ``/readyz``; raises if the server's ``process`` exits or it is not ready in time (then the process,
    if it is one, is killed). ``process`` is None for a server running inside this process."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server at {url} exited with {process.returncode}:\n{describe()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    if process is not None:
        process.kill()
    raise TimeoutError(f"server at {url} not ready after {timeout_seconds} s:\n{describe()}")


def start_server(data_dir: Path, demo_dir: Path, port: int, model: str,
                 settings: dict[str, str] | None = None) -> subprocess.Popen:
    """``serve`` for one model on loopback in a subprocess (output discarded), once ready; ``settings`` are
    extra ``QIS_*`` variables."""
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(port), "--data-dir",
               str(data_dir), "--models", model]
    environment = {**ENVIRONMENT, "QIS_DEMO_MODELS_DIR": str(demo_dir), **(settings or {})}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_ready(f"http://127.0.0.1:{port}", process, timeout_seconds=600)
    return process
