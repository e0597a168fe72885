"""Shared fixtures: tiny demo models built once, a loopback image host, a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dashscope
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from bench.servers import wait_until_ready
from qwen_image_server.api.connections import uvicorn_config
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.keys import KeyStore
from qwen_image_server.media.fetch import ImageFetcher, Resolver, resolve_host
from qwen_image_server.settings import MiB, Settings

READY_TIMEOUT_SECONDS = 600


@pytest.fixture(scope="session")
def demo_models_dir() -> Path:
    """Built once per machine (the builder is idempotent), like the server's own demo preset."""
    default = Path.home() / ".cache" / "qwen-image-server" / "test-demo-models"
    path = Path(os.environ.get("QIS_TEST_DEMO_MODELS", default))
    build_demo_models(path)
    return path


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A gradient image: cheap to compress, and not flat, so edits have something to see."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    image = Image.blend(image, Image.new("RGB", size, colour), 0.5)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class ImageHost:
    """A loopback HTTP server serving registered bodies; counts requests per path."""

    server: ThreadingHTTPServer
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def add(self, name: str, body: bytes, content_type: str = "image/png") -> str:
        self.files[f"/{name}"] = (body, content_type)
        return f"http://{self.netloc}/{name}"


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host: ImageHost

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.hits[self.path] = host.hits.get(self.path, 0) + 1
            body, content_type = host.files.get(self.path, (b"missing", "text/plain"))
            self.send_response(200 if self.path in host.files else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host = ImageHost(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield host
    server.shutdown()
    server.server_close()
    thread.join()


@dataclass
class RunningServer:
    url: str
    key: str
    settings: Settings
    app: FastAPI

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=300,
                            headers={"Authorization": f"Bearer {self.key}"})


@contextlib.contextmanager
def sdk_pointed_at(url: str) -> Iterator[None]:
    """The official SDK's documented way to use another server: its base URL, set for the block."""
    previous = dashscope.base_http_api_url
    dashscope.base_http_api_url = f"{url}/api/v1"
    try:
        yield
    finally:
        dashscope.base_http_api_url = previous


@pytest.fixture(scope="module")
def sdk_at_server(server: RunningServer) -> Iterator[None]:
    """The SDK pointed at the session server for a whole module: ``pytestmark = usefixtures("sdk_at_server")``."""
    with sdk_pointed_at(server.url):
        yield


def fetch_each(settings: Settings, urls: Sequence[str], resolver: Resolver = resolve_host) -> list[bytes]:
    """Fetch the URLs in turn with one fetcher, as the server shares one."""

    async def run() -> list[bytes]:
        fetcher = ImageFetcher(settings, resolver=resolver)
        try:
            return [await fetcher.fetch(url) for url in urls]
        finally:
            await fetcher.aclose()

    return asyncio.run(run())


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serving(data_dir: Path, demo_models_dir: Path, sock: socket.socket, **overrides: Any) -> Iterator[RunningServer]:
    """A real uvicorn server on loopback, in a thread of this process, until the block ends."""
    from qwen_image_server.app import create_app

    port = sock.getsockname()[1]
    settings = Settings(data_dir=data_dir, demo_models_dir=demo_models_dir, port=port, **overrides)
    key = KeyStore(settings.database_path).create("tests")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, None, READY_TIMEOUT_SECONDS)
        yield RunningServer(url, key, settings, app)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path,
           image_host: ImageHost) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("server-data"), demo_models_dir, free_socket(),
                 fetch_allowed_hosts=[image_host.netloc], max_image_bytes=2 * MiB, max_request_bytes=8 * MiB,
                 rate_limits_enabled=False) as running:
        yield running
