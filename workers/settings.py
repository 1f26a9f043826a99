"""Worker settings, read once at start-up (environment FLEET_*, then command-line overrides)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    registry_url: str = "sqlite:///var/registry.db"
    model: str = Field(default="", description="Model name to serve.")
    model_version: str | None = Field(default=None, description="Defaults to the stable version.")
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    concurrency: int = Field(default=64, ge=1, description="Requests in flight at once.")
    enforce_eager: bool = False
    verify_checksums: bool = Field(default=True, description="sha256 every checkpoint file "
                                   "before loading; False checks sizes only")
    allow_unrecorded_checkpoint: bool = Field(
        default=False, description="load a checkpoint the registry has no checksums for "
        "(registered before they were recorded) instead of refusing it")
    kv_cache_gib: int | None = None
    max_num_seqs: int | None = None
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    stream_ttl_s: int = Field(default=3600, ge=1)
    stream_max_len: int = Field(default=100_000, ge=100)
    visibility_timeout_s: int = Field(default=3600, ge=1)
    log_level: str = "INFO"
