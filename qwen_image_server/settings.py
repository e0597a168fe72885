"""The one typed configuration object, built once at start-up and passed down.

Values come from keyword arguments (the CLI), then ``QIS_*`` environment variables, then the defaults
below. Nothing here is read at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "qwen-image-server"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QIS_", env_nested_delimiter="__", extra="forbid")

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_base_url: str | None = None
    allow_public_without_key: bool = False
    max_request_bytes: int = Field(32 * MiB, gt=0)

    # Models
    preset: Literal["demo", "real"] = "demo"
    models_config: Path | None = None
    enabled_models: list[str] | None = None
    demo_models_dir: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prompt_extend_max_new_tokens: int = Field(128, ge=1, le=2048)

    # Storage
    data_dir: Path = Field(default_factory=default_data_dir)
    result_ttl_seconds: int = Field(24 * 3600, gt=0)
    cleanup_interval_seconds: float = Field(600.0, gt=0)
    url_signing_secret: str | None = None

    # Input images (security.md)
    fetch_allowed_hosts: list[str] = Field(default_factory=list)
    fetch_allowed_ports: list[int] = Field(default_factory=lambda: [80, 443])
    fetch_connect_timeout: float = Field(5.0, gt=0)
    fetch_total_timeout: float = Field(15.0, gt=0)
    fetch_max_redirects: int = Field(3, ge=0)
    max_image_bytes: int = Field(10 * MiB, gt=0)
    max_image_pixels: int = Field(16_800_000, gt=0)
    min_image_side: int = Field(1, ge=1)
    max_image_side: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if self.demo_models_dir is None:
            self.demo_models_dir = self.data_dir / "demo-models"
        return self

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

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
