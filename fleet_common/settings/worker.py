"""A worker's settings."""

from __future__ import annotations

import os
import socket

from pydantic import Field, model_validator

from fleet_common.logs import LogFormat
from fleet_common.settings.base import FleetSettings


class WorkerSettings(FleetSettings):
    redis_url: str = "redis://127.0.0.1:6379/0"
    registry_url: str = "sqlite:///var/registry.db"
    registry_api_key: str = Field(
        default="", description="API key sent to a grpc:// registry (any scope; give workers an "
        "'inference' key). Not used with a database URL.")
    model: str = Field(default="", description="Model name to serve.")
    model_version: str | None = Field(default=None, description="Defaults to the stable version.")
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                             description="Defaults to <hostname>-<pid>.")
    concurrency: int = Field(default=64, ge=1, description="Requests in flight at once.")
    enforce_eager: bool = False
    verify_checksums: bool = Field(default=True, description="sha256 every checkpoint file "
                                   "before loading; False checks sizes only")
    allow_unrecorded_checkpoint: bool = Field(
        default=False, description="load a checkpoint the registry has no checksums for "
        "(registered before they were recorded) instead of refusing it")
    kv_cache_gib: int | None = None
    max_num_seqs: int | None = None
    fair_share_reserve: int = Field(
        default=0, ge=0, description="Of FLEET_CONCURRENCY's slots, how many are kept for "
        "tenants running fewer than their fair share of the others here: a flooding tenant "
        "fills the open slots, and a light tenant's request starts at once in a reserve slot "
        "instead of waiting for one to free (fleet_common.fair_queue). Set "
        "FLEET_MAX_NUM_SEQS to at least FLEET_CONCURRENCY with it, so the engine runs what the "
        "reserve slots take.")
    capacity: int | None = Field(
        default=None, ge=1, description="Requests this worker runs at once well, published in "
        "its status hash for the gateways' admission control. Default: FLEET_CONCURRENCY, or "
        "FLEET_MAX_NUM_SEQS when that is smaller, less FLEET_FAIR_SHARE_RESERVE.")
    heartbeat_interval_s: float = Field(default=1.0, gt=0, description="Well under the "
                                        "gateways' FLEET_WORKER_LIVENESS_S.")
    drain_grace_s: float = Field(
        default=60.0, ge=0, description="On SIGTERM, how long requests in flight may run to "
        "completion; those still running after it end with UNAVAILABLE and the gateway re-runs "
        "them on another worker. A pod's terminationGracePeriodSeconds must exceed it.")
    stream_ttl_s: int = Field(default=3600, ge=1)
    stream_max_len: int = Field(default=100_000, ge=100)
    visibility_timeout_s: int = Field(
        default=3600, ge=1, description="Redis transport's redelivery of unacknowledged "
        "messages. Longer than the longest deadline (FLEET_MAX_DEADLINE_S), so a redelivered "
        "message has always expired and is dropped: gateways re-run lost requests themselves.")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve Prometheus /metrics on this port "
        "(0 picks one); off when unset. Turns vLLM's per-step stats on.")
    metrics_host: str = "0.0.0.0"
    log_level: str = "INFO"
    log_format: LogFormat = Field(default="text", description="text, or json: one JSON object "
                                  "per line with request id, tenant, trace and span ids.")

    @model_validator(mode="after")
    def _reserve_leaves_open_slots(self) -> WorkerSettings:
        if self.fair_share_reserve >= self.concurrency:
            raise ValueError(
                f"FLEET_FAIR_SHARE_RESERVE ({self.fair_share_reserve}) must be less than "
                f"FLEET_CONCURRENCY ({self.concurrency}): at least one slot must be open to "
                "every tenant")
        return self

    @property
    def open_slots(self) -> int:
        """Slots any tenant's request may take: FLEET_CONCURRENCY less the reserve."""
        return self.concurrency - self.fair_share_reserve

    @property
    def published_capacity(self) -> int:
        engine_slots = min(self.concurrency, self.max_num_seqs or self.concurrency)
        return self.capacity or max(engine_slots - self.fair_share_reserve, 1)
