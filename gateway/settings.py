"""Gateway settings, read once at start-up (environment FLEET_*, then command-line overrides)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseSettings):
    """Bounds on request fields; every one appears in the error message that enforces it."""

    model_config = SettingsConfigDict(env_prefix="FLEET_LIMIT_", extra="ignore")

    max_n: int = 8
    max_logprobs: int = 5
    max_stop_sequences: int = 8
    max_stop_sequence_chars: int = 64
    max_prompt_chars: int = 1_000_000
    max_messages: int = 256
    default_max_tokens: int = 256


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    registry_url: str = "sqlite:///var/registry.db"
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535, description="0 picks a free port.")
    port_file: str | None = Field(default=None, description="Write the bound port here.")
    default_deadline_s: float = Field(default=120.0, gt=0)
    max_deadline_s: float = Field(default=1800.0, gt=0)
    deadline_margin_s: float = Field(
        default=0.3, ge=0, description="Answer this long (at most a tenth of the budget) before "
        "the client's deadline, so it gets our status and not its own bare DEADLINE_EXCEEDED.")
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="API key -> tenant. Empty: no authentication."
    )
    registry_refresh_s: float = Field(default=2.0, gt=0)
    worker_liveness_s: float = Field(default=10.0, gt=0)
    redis_max_connections: int = 2048
    redis_socket_timeout_s: float = Field(default=10.0, gt=1.0, description="Must exceed the "
                                          "stream read block (1 s).")
    limits: Limits = Field(default_factory=Limits)
    log_level: str = "INFO"
