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
