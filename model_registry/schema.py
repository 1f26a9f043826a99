"""Registry tables. Change them only together with a migration in migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database (SQLite stores no zone and returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Pool(Base):
    """A group of identical workers (e.g. all 1-GPU workers) with its own queues and scaling."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tensor_parallel_size: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(256), default="")


class Checkpoint(Base):
    """Model weights and tokenizer in a directory, with every file's size and sha256."""

    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    directory: Mapped[str] = mapped_column(String(1024))
    source_repo: Mapped[str] = mapped_column(String(256), default="")
    format: Mapped[str] = mapped_column(String(32), default="safetensors")
    dtype: Mapped[str] = mapped_column(String(32), default="auto")
    quantization: Mapped[str] = mapped_column(String(32), default="")
    architecture: Mapped[str] = mapped_column(String(128), default="")
    vocab_size: Mapped[int] = mapped_column(Integer, default=0)
    context_length: Mapped[int] = mapped_column(Integer, default=0)
    tokenizer: Mapped[str] = mapped_column(String(32), default="")
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    files: Mapped[list[CheckpointFileRow]] = relationship(
        back_populates="checkpoint", order_by="CheckpointFileRow.path",
        cascade="all, delete-orphan")


class CheckpointFileRow(Base):
    __tablename__ = "checkpoint_files"
    __table_args__ = (UniqueConstraint("checkpoint_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    checkpoint: Mapped[Checkpoint] = relationship(back_populates="files")


class Template(Base):
    """An immutable version of a named prompt format."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    infill: Mapped[bool] = mapped_column(Boolean, default=False)
    chat_format: Mapped[str] = mapped_column(String(64), default="")
    chat_template: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class Model(Base):
    """A model name users ask for."""

    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ModelVersion(Base):
    """A servable unit: checkpoint + template version + engine settings, in one pool."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    version: Mapped[str] = mapped_column(String(64))
    pool_name: Mapped[str] = mapped_column(ForeignKey("pools.name"))
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"))
    context_limit: Mapped[int] = mapped_column(Integer)
    tensor_parallel_size: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(32), default="auto")
    quantization: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    checkpoint: Mapped[Checkpoint] = relationship()
    template: Mapped[Template] = relationship()


class Rollout(Base):
    """Which versions of a model get new requests. `revision` guards against lost updates."""

    __tablename__ = "rollouts"

    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    stable_version: Mapped[str] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_weight: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RolloutEvent(Base):
    """One recorded change of a rollout: who, when, what, why, and the state it left."""

    __tablename__ = "rollout_events"
    __table_args__ = (UniqueConstraint("model_name", "revision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name"))
    revision: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(String(1024), default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    stable_version: Mapped[str] = mapped_column(String(64))
    candidate_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    candidate_weight: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)


class Tenant(Base):
    """Who API keys belong to; gateways scope requests by its name."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    # The tenant's policy (records.TenantPolicy): limits of 0 are no limit.
    max_concurrent: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    requests_per_minute: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tokens_per_minute: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_queued_job_items: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    max_priority: Mapped[str] = mapped_column(String(16), default="high", server_default="high")


class ApiKey(Base):
    """An API key: only the sha256 of the whole key is stored. Names stay taken after
    revocation, so `<tenant>/<name>` in a history names one key."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(128))  # comma-separated, in api_keys.SCOPES order
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(128), default="")
    tenant: Mapped[Tenant] = relationship()
