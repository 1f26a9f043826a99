"""What the registry hands out: plain frozen records, detached from the database session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet_common.keys import queue_name


@dataclass(frozen=True)
class FileRecord:
    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class CheckpointRecord:
    name: str
    directory: str
    source_repo: str
    format: str
    dtype: str
    quantization: str
    architecture: str
    vocab_size: int
    context_length: int
    tokenizer: str
    total_bytes: int
    created_at: datetime
    files: tuple[FileRecord, ...] = ()


@dataclass(frozen=True)
class TemplateRecord:
    name: str
    version: int
    infill: bool
    chat_format: str
    chat_template: str
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class ServedModel:
    """Everything the gateway and a worker need to know about one model version."""

    model: str
    version: str
    pool: str
    checkpoint: str
    checkpoint_dir: str
    template: str  # name@version
    chat_format: str
    chat_template: str
    supports_infill: bool
    context_limit: int
    tensor_parallel_size: int
    dtype: str
    quantization: str = ""
    created_at: datetime | None = None

    @property
    def supports_chat(self) -> bool:
        return bool(self.chat_format)

    @property
    def queue(self) -> str:
        return queue_name(self.pool, self.model, self.version)

    @property
    def modes(self) -> tuple[str, ...]:
        modes = ["completion"]
        if self.supports_infill:
            modes.append("infill")
        if self.supports_chat:
            modes.append("chat")
        return tuple(modes)


@dataclass(frozen=True)
class RolloutState:
    model: str
    stable_version: str
    candidate_version: str | None
    candidate_weight: int
    paused: bool
    revision: int
    updated_at: datetime


@dataclass(frozen=True)
class RolloutEventRecord:
    model: str
    revision: int
    action: str
    actor: str
    reason: str
    at: datetime
    stable_version: str
    candidate_version: str | None
    candidate_weight: int
    paused: bool


@dataclass(frozen=True)
class ServedRollout:
    """A model's rollout with both versions resolved, as the gateway routes by it."""

    state: RolloutState
    stable: ServedModel
    candidate: ServedModel | None


@dataclass(frozen=True)
class TenantRecord:
    name: str
    display_name: str
    created_at: datetime
    created_by: str
    policy: TenantPolicy | None = None


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key as operators see it: never its secret or hash."""

    key_id: str
    tenant: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    revoked_by: str = ""


@dataclass(frozen=True)
class KeyGrant:
    """A usable key as it is checked: who it is and what it may do."""

    key_id: str
    key_sha256: str
    tenant: str
    key_name: str
    scopes: tuple[str, ...]
    expires_at: datetime | None = None

    @property
    def actor(self) -> str:
        """What the registry records as who made a change."""
        return f"{self.tenant}/{self.key_name}"

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


#: Request priorities as tenant settings name them, lowest first.
PRIORITY_NAMES = ("low", "normal", "high")


@dataclass(frozen=True)
class TenantPolicy:
    """What one tenant may use. A limit of 0 is no limit.

    `weight` is the tenant's share when tenants compete for a queue (fair share); `max_priority`
    is the highest priority its requests may ask for (one of PRIORITY_NAMES).
    """

    tenant: str
    max_concurrent: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    max_queued_job_items: int = 0
    weight: int = 1
    max_priority: str = "high"


@dataclass(frozen=True)
class AuthSnapshot:
    """Every usable key, and whether calls without one are refused (once any key exists);
    the policies of the tenants that have one (a tenant without one has TenantPolicy's
    defaults)."""

    grants: tuple[KeyGrant, ...] = ()
    required: bool = False
    policies: tuple[TenantPolicy, ...] = ()
