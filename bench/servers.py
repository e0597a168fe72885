"""What the benchmarks share: server subprocesses on a free loopback port, with jemalloc preloaded where installed.

jemalloc (Debian's ``libjemalloc2``) keeps CPU inference time steady from one process to the next; see
``edit_latency.py``.
"""

from __future__ import annotations

import os
import socket
import subprocess
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
