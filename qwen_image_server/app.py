"""The app factory: the lifespan owns the engine, key store, result store and HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from functools import partial

from fastapi import FastAPI

from qwen_image_server.api import files, health
from qwen_image_server.api.context import RequestContextMiddleware
from qwen_image_server.api.dashscope import routes as dashscope_routes
from qwen_image_server.api.dashscope.service import GenerationService
from qwen_image_server.api.errors import install_error_handlers
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.engine import Device, Engine, EngineRunner
from qwen_image_server.engine.registry import load_registry
from qwen_image_server.keys import KeyStore
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import ImageLimits
from qwen_image_server.media.storage import ResultStore, UrlSigner, load_or_create_secret
from qwen_image_server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = load_registry(settings.preset, settings.demo_models_dir, settings.models_config,
                                 settings.enabled_models)
        secret = (settings.url_signing_secret.encode() if settings.url_signing_secret
                  else load_or_create_secret(settings.data_dir / "url-signing.key"))
        results = ResultStore(settings.results_dir, UrlSigner(secret), settings.base_url,
                              settings.result_ttl_seconds)
        runner = EngineRunner(Engine(registry, Device.choose(settings.device),
                                     settings.prompt_extend_max_new_tokens))
        fetcher = ImageFetcher(settings)
        app.state.registry = registry
        app.state.keys = KeyStore(settings.database_path)
        app.state.results = results
        app.state.runner = runner
        app.state.generation = GenerationService(registry, runner, fetcher,
                                                 ImageLimits.from_settings(settings), results)
        prepare = partial(build_demo_models, settings.demo_models_dir) if settings.preset == "demo" else None
        background = [
            asyncio.create_task(_load_models(runner, prepare)),
            asyncio.create_task(results.remove_expired_periodically(settings.cleanup_interval_seconds)),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await fetcher.aclose()
            runner.close()

    app = FastAPI(title="qwen-image-server", version="0.1.0", lifespan=lifespan,
                  description="Qwen-Image editing and generation behind the DashScope HTTP API.")
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes)
    install_error_handlers(app)
    app.include_router(dashscope_routes.router)
    app.include_router(files.router)
    app.include_router(health.router)
    return app


async def _load_models(runner: EngineRunner, prepare: partial | None) -> None:
    try:
        await runner.load(prepare)
    except Exception:
        log.exception("loading models failed; /readyz stays 503 and requests get ModelUnavailable")
