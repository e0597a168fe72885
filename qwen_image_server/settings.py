"""The one typed configuration object, built once at start-up and passed down.

Values come from keyword arguments (the CLI), then ``QIS_*`` environment variables, then the defaults
below. Nothing here is read at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class RateLimit(BaseModel):
    """One model's per-key limits; None means unlimited."""

    per_second: int | None = Field(None, ge=1)
    per_minute: int | None = Field(None, ge=1)
    concurrent_async_tasks: int | None = Field(None, ge=1)


def hosted_rate_limits() -> dict[str, RateLimit]:
    """The hosted API's per-model table (spec §5); ``*`` covers every other name."""
    per_minute = RateLimit(per_minute=2)
    async_two = RateLimit(per_second=2, concurrent_async_tasks=2)
    return {
        "*": RateLimit(per_second=2),
        "qwen-image": async_two,
        "qwen-image-plus": async_two,
        **{name: per_minute for name in ("qwen-image-max", "qwen-image-max-2025-12-30", "qwen-image-edit-max",
                                         "qwen-image-edit-max-2026-01-16")},
    }


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "qwen-image-server"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QIS_", env_nested_delimiter="__", extra="forbid")

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_base_url: str | None = None
    create_first_key: bool = False  # beyond loopback too; it is printed, so it lands in the logs
    api_docs: bool = False  # /docs and /redoc (Swagger UI and ReDoc from a CDN); /openapi.json is always served

    # Client limits (api/connections.py, api/frontdoor.py)
    max_request_bytes: int = Field(32 * MiB, gt=0)
    max_buffered_request_bytes: int = Field(512 * MiB, gt=0)  # bodies held by all requests in flight together
    header_timeout_seconds: float = Field(10.0, gt=0)  # from connecting, or from the previous response
    body_grace_seconds: float = Field(10.0, ge=0)
    body_min_bytes_per_second: int = Field(32 * 1024, gt=0)  # after the grace period, on average
    keep_alive_seconds: int = Field(5, gt=0)
    max_connections: int = Field(1000, ge=1)  # and within the descriptor limit (api/connections.py)
    max_connections_per_client: int = Field(256, ge=1)
    max_requests_per_connection: int = Field(1000, ge=1)

    # Models
    preset: Literal["demo", "real", "apache"] = "demo"  # apache: every name on Apache-2.0 weights only
    models_config: Path | None = None
    enabled_models: list[str] | None = None
    model_aliases: dict[str, str] = Field(default_factory=dict)  # name -> served name (e.g. the 3.0 names)
    demo_models_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cuda_devices: list[int] | None = None  # GPUs that get an engine worker each; default: every visible GPU
    prompt_extend_max_new_tokens: int = Field(128, ge=1, le=2048)

    # Storage
    data_dir: Path = Field(default_factory=default_data_dir)
    result_ttl_seconds: int = Field(24 * 3600, gt=0)
    cleanup_interval_seconds: float = Field(600.0, gt=0)
    url_signing_secret: str | None = None
    upload_ttl_seconds: int = Field(48 * 3600, gt=0)  # the SDK's temporary oss:// files, as hosted
    upload_policy_seconds: int = Field(300, gt=0)
    upload_capacity_bytes: int = Field(1024 * MiB, gt=0)  # per key, over its unexpired uploads

    # Tasks and queue
    max_pending_tasks: int = Field(64, ge=1)
    max_pending_tasks_per_key: int = Field(16, ge=1)
    # Work in flight per key (PENDING + RUNNING), in megapixel-steps: output megapixels x images x
    # transformer calls (steps, twice under true CFG). One 2048x2048 n=6 edit at 40 CFG steps is ~2,000.
    max_cost_per_key: float = Field(8000.0, gt=0)
    max_result_bytes_per_key: int = Field(2048 * MiB, gt=0)  # stored results within their 24 h
    task_max_seconds: float = Field(1800.0, gt=0)  # a task still running then fails with RequestTimeOut
    max_batch_size: int = Field(4, ge=1)
    # An idle worker woken by a submission waits this long before it claims, so a burst forms one batch.
    batch_collect_seconds: float = Field(0.0, ge=0, le=1.0)
    task_lease_seconds: float = Field(30.0, gt=0)
    task_max_attempts: int = Field(3, ge=1)
    task_poll_seconds: float = Field(1.0, gt=0)

    # Per-key limits (429 Throttling.RateQuota)
    rate_limits_enabled: bool = True
    rate_limits: dict[str, RateLimit] = Field(default_factory=hosted_rate_limits)
    key_requests_per_second: int = Field(50, ge=1)  # every authenticated request, counted before its body

    # Input images (security.md)
    fetch_allowed_hosts: list[str] = Field(default_factory=list)
    fetch_allowed_ports: list[int] = Field(default_factory=lambda: [80, 443])
    fetch_connect_timeout: float = Field(5.0, gt=0)
    fetch_total_timeout: float = Field(15.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    max_image_bytes: int = Field(10 * MiB, gt=0)
    max_image_pixels: int = Field(16_800_000, gt=0)
    min_image_side: int = Field(384, ge=1)  # the hosted API's range for each side of an input image
    max_image_side: int = Field(3072, ge=1)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        return self

    @property
    def demo_models(self) -> Path:
        """Where the demo preset's tiny models are built: ``demo_models_dir``, or inside the data directory."""
        return self.demo_models_dir or self.data_dir / "demo-models"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "server.db"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def base_url(self) -> str:
        """Absolute prefix for result URLs handed to clients."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
