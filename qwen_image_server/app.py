"""The app factory: the front door (key store, request limits) is built with the app; the lifespan owns the
engines and their workers, the task store and queue, the result and upload stores and the HTTP client, and
stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from qwen_image_server.api import files, health
from qwen_image_server.api import metrics as metrics_routes
from qwen_image_server.api.dashscope import routes as dashscope_routes
from qwen_image_server.api.dashscope.service import DashScopeService
from qwen_image_server.api.dashscope.tasks import TaskViews
from qwen_image_server.api.dashscope.uploads import UPLOADS_ROUTE, UploadService
from qwen_image_server.api.docs import install_docs
from qwen_image_server.api.errors import install_error_handlers
from qwen_image_server.api.frontdoor import BodyLimits, FrontDoor
from qwen_image_server.api.limits import RateLimiter
from qwen_image_server.api.openai import routes as openai_routes
from qwen_image_server.api.openai.service import OpenAIImagesService
from qwen_image_server.api.openapi import install_openapi
from qwen_image_server.api.playground import install_playground
from qwen_image_server.api.submissions import GenerationService
from qwen_image_server.engine.demo_models import build_demo_models
from qwen_image_server.engine.engine import Device, Engine, EngineRunner
from qwen_image_server.engine.registry import ModelRegistry, load_registry
from qwen_image_server.keys import KeyStore
from qwen_image_server.media.fetch import ImageFetcher
from qwen_image_server.media.images import ImageLimits
from qwen_image_server.media.storage import ResultStore, UrlSigner, load_or_create_secret, remove_expired_periodically
from qwen_image_server.media.uploads import UploadStore
from qwen_image_server.metrics import Metrics
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.models import Quota
from qwen_image_server.tasks.queue import TaskQueue
from qwen_image_server.tasks.sqlite import SqliteTaskStore
from qwen_image_server.tasks.worker import PlanFor, Worker, maintain_periodically

log = logging.getLogger(__name__)


UPLOAD_FORM_OVERHEAD_BYTES = 64 * 1024
COMPATIBLE_MODE_PREFIX = "/compatible-mode"  # the policy, its signature and the other OSS form fields


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    keys = KeyStore(settings.database_path)
    rate_limiter = RateLimiter(settings.rate_limits, settings.rate_limits_enabled, settings.key_requests_per_second)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = load_registry(settings.preset, settings.demo_models, settings.models_config,
                                 settings.enabled_models, settings.model_aliases)
        warn_of_non_commercial_weights(registry)
        secret = (settings.url_signing_secret.encode() if settings.url_signing_secret
                  else load_or_create_secret(settings.data_dir / "url-signing.key"))
        results = ResultStore(settings.results_dir, UrlSigner(secret), settings.base_url,
                              settings.result_ttl_seconds)
        uploads = UploadStore(settings.uploads_dir, settings.database_path, secret,
                              ttl_seconds=settings.upload_ttl_seconds, policy_seconds=settings.upload_policy_seconds,
                              max_bytes=settings.max_image_bytes, capacity_bytes=settings.upload_capacity_bytes)
        store = SqliteTaskStore(settings.database_path)
        metrics.watch_queue_depth(store.count_pending)
        limits = ImageLimits.from_settings(settings)
        plans = [variant.plan for spec in registry.specs() for variant in spec.variants()]
        runners = [EngineRunner(Engine(plans, device, settings.prompt_extend_max_new_tokens))
                   for device in Device.choose_all(settings.device, settings.cuda_devices)]
        quota = Quota(settings.max_pending_tasks, settings.max_pending_tasks_per_key, settings.max_cost_per_key,
                      settings.max_result_bytes_per_key)
        queue = TaskQueue(store, quota, settings.task_poll_seconds, workers=len(runners))
        # A name unique to this start: two processes on one data directory (or a restart while a dead
        # process's leases still run) never take each other's tasks for their own.
        instance = secrets.token_hex(4)
        workers = [Worker(f"{device_label(runner)}-{index}-{instance}", runner, queue, results, limits, metrics,
                          settings.task_lease_seconds, settings.max_batch_size, plan_for(registry),
                          settings.task_max_seconds, settings.batch_collect_seconds)
                   for index, runner in enumerate(runners)]
        fetcher = ImageFetcher(settings)
        await fetcher.check_guard()
        app.state.registry = registry
        app.state.started_at = int(time.time())
        app.state.results = results
        app.state.uploads = uploads
        app.state.runners = runners
        app.state.metrics = metrics
        generation = GenerationService(registry, queue, fetcher, limits, results, uploads, rate_limiter,
                                       lambda: all(runner.ready for runner in runners))
        app.state.dashscope = DashScopeService(generation)
        app.state.openai_images = OpenAIImagesService(generation)
        app.state.upload_service = UploadService(uploads, keys, registry, limits, settings.base_url)
        app.state.task_views = TaskViews(store, results, settings.result_ttl_seconds)
        prepare = (lambda: build_demo_models(settings.demo_models)) if settings.preset == "demo" else None
        background = [
            asyncio.create_task(_load_models(runners, prepare, queue)),
            *(asyncio.create_task(worker.run_forever()) for worker in workers),
            asyncio.create_task(maintain_periodically(queue, settings.task_max_attempts,
                                                      settings.result_ttl_seconds, settings.task_lease_seconds / 2)),
            asyncio.create_task(remove_expired_periodically(results, settings.cleanup_interval_seconds, "results")),
            asyncio.create_task(remove_expired_periodically(uploads, settings.cleanup_interval_seconds, "uploads")),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await fetcher.aclose()
            for runner in runners:
                runner.close()

    app = FastAPI(title="qwen-image-server", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False,
                  description="Qwen-Image editing and generation behind the DashScope and OpenAI images APIs.")
    app.state.keys = keys
    body_limits = BodyLimits(settings.max_request_bytes, settings.body_grace_seconds,
                             settings.body_min_bytes_per_second, settings.max_buffered_request_bytes,
                             {UPLOADS_ROUTE: settings.max_image_bytes + UPLOAD_FORM_OVERHEAD_BYTES})
    app.add_middleware(FrontDoor, keys=keys, rate_limiter=rate_limiter, limits=body_limits)
    app.add_middleware(metrics_routes.RequestMetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    app.include_router(dashscope_routes.router)
    app.include_router(openai_routes.router)
    # Model Studio's OpenAI-compatible base path; documented once, under /v1, in the schema.
    app.include_router(openai_routes.router, prefix=COMPATIBLE_MODE_PREFIX, include_in_schema=False)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(metrics_routes.router)
    install_playground(app)
    install_openapi(app)
    if settings.api_docs:
        install_docs(app)
    return app


def plan_for(registry: ModelRegistry) -> PlanFor:
    return lambda model, image_count: registry.get(model).serving(image_count).plan


def warn_of_non_commercial_weights(registry: ModelRegistry) -> None:
    restricted = registry.non_commercial()
    if restricted:
        log.warning("NON-COMMERCIAL WEIGHTS: %s run on weights under the %s; they may not be used commercially. "
                    "--preset apache serves every name on Apache-2.0 weights.",
                    ", ".join(spec.name for spec in restricted), restricted[0].licence.name)


def device_label(runner: EngineRunner) -> str:
    return runner.engine.device.name.replace(":", "")


async def _load_models(runners: list[EngineRunner], prepare: Callable[[], object] | None, queue: TaskQueue) -> None:
    try:
        if prepare is not None:
            await asyncio.to_thread(prepare)
        await asyncio.gather(*(runner.load() for runner in runners))
    except Exception:
        log.exception("loading models failed; /readyz stays 503 and requests get ModelUnavailable")
    queue.wake_workers()
