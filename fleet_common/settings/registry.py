"""The registry service's settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from pydantic import Field

from fleet_common.logs import LogFormat
from fleet_common.settings.base import FleetSettings


class RegistrySettings(FleetSettings):
    # `python -m model_registry --port 50061` predates the registry_ prefix of these fields.
    flag_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "registry_host": ("--host",),
        "registry_port": ("--port",),
        "registry_port_file": ("--port-file",),
    }

    registry_url: str = "sqlite:///var/registry.db"
    registry_host: str = "127.0.0.1"
    registry_port: int = Field(default=50061, ge=0, le=65535, description="0 picks a free port.")
    registry_port_file: str | None = Field(default=None, description="Write the bound port here.")
    checkpoint_root: str = "var/checkpoints"
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="Where the workers' "
                           "heartbeats are: a canary needs a live worker of its version.")
    worker_liveness_s: float = Field(
        default=5.0, gt=0, description="A worker whose last heartbeat is older is dead; keep it "
        "the gateways' value.")
    registry_auth: str = Field(
        default="required", pattern="^(required|off)$", description="required: every call "
        "needs an API key (authorization: Bearer <key>), reads any scope, writes 'operator'; "
        "the first key comes from `python -m model_registry bootstrap-key`. off: anyone may "
        "call, for tests and single-user setups only.")
    usage_accounting: bool = Field(
        default=True, description="Store the usage the gateways count (the Redis stream "
        "fleet:usage in FLEET_REDIS_URL) in the database; every registry replica joins one "
        "consumer group. UsageService reads it either way.")
    usage_claim_idle_s: float = Field(
        default=30.0, gt=0, description="A usage entry another registry replica took and has "
        "not stored for this long is taken over (that replica died).")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus /metrics on this port "
        "(0 picks one); off when unset.")
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: LogFormat = Field(default="text", description="text, or json: one JSON object "
                                  "per line.")
