"""Server subprocesses for the reliability runs (``load.py``, ``crash_loop.py``) and their tests.

A ``ServerProcess`` is ``qwen-image-server serve`` on a free loopback port over a data directory that outlives
it, so it can be killed and started again on the same tasks. Each start appends to one log file.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

if __package__ in (None, ""):  # imported by a script run as ``python bench/x.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.servers import ENVIRONMENT, free_port, wait_until_ready

REPOSITORY = Path(__file__).resolve().parents[1]
MODEL = "qwen-image-2.0"
SYNTHESIS = "/api/v1/services/aigc/text2image/image-synthesis"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
ASYNC = {"X-DashScope-Async": "enable"}
DEFAULT_DEMO_MODELS = Path.home() / ".cache" / "qwen-image-server" / "test-demo-models"
_WORKER_STARTED = re.compile(rb"worker (\S+): started")


def synthesis(prompt: str, size: str = "512*512") -> dict:
    return {"model": MODEL, "input": {"prompt": prompt}, "parameters": {"size": size, "prompt_extend": False}}


def generation(prompt: str, size: str = "512*512") -> dict:
    return {"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": prompt}]}]},
            "parameters": {"size": size, "prompt_extend": False}}


@dataclass
class Start:
    """One life of the server process: when it started and ended, and where its lines begin in the log."""

    started: float
    log_offset: int
    ended: float | None = None
    worker: str | None = None


@dataclass
class ServerProcess:
    """One server over ``data_dir``; ``start`` again after a kill to restart it on the same data."""

    data_dir: Path
    demo_models_dir: Path
    log_path: Path
    settings: dict[str, str] = field(default_factory=dict)  # QIS_* environment overrides
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    starts: list[Start] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout_seconds: float = 300) -> None:
        environment = {**ENVIRONMENT, "QIS_DEMO_MODELS_DIR": str(self.demo_models_dir),
                       "QIS_RATE_LIMITS_ENABLED": "false", **self.settings}
        command = [sys.executable, "-m", "qwen_image_server", "serve", "--port", str(self.port),
                   "--data-dir", str(self.data_dir), "--models", MODEL]
        with self.log_path.open("ab") as log:
            self.starts.append(Start(time.time(), log.tell()))
            self.process = subprocess.Popen(command, env=environment, cwd=REPOSITORY, stdout=log,
                                            stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout_seconds)

    def wait_ready(self, timeout_seconds: float = 300) -> None:
        assert self.process is not None
        wait_until_ready(self.url, self.process, timeout_seconds, self.log_tail)

    def stop(self, signal_number: int = signal.SIGKILL, timeout_seconds: float = 120) -> int:
        """Sends the signal and waits for the process to be gone; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        try:
            status = self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        start = self.starts[-1]
        start.ended = time.time()
        log = self.log_path.read_bytes()[start.log_offset:]
        start.worker = next((match.decode() for match in _WORKER_STARTED.findall(log)), None)
        return status

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def client(self, key: str, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {key}"})


def environment_settings(**settings: object) -> dict[str, str]:
    """``QIS_*`` variables from keyword settings: ``max_pending_tasks=4`` -> ``QIS_MAX_PENDING_TASKS=4``."""
    return {f"QIS_{name.upper()}": str(value) for name, value in settings.items()}

