"""Batch job tables (migration 0006), beside `schema.py`'s on the same metadata.

A job is a tenant's batch of items (one request each); every item ends with exactly one
result. `job_webhook_events` is the outbox of webhook deliveries, written in the same
transaction as the job's end; `tenant_webhook_secrets` holds each tenant's signing secret.
Tenants are names, not references to `tenants` (as in `usage_schema.py`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from model_registry.schema import Base, UtcDateTime, utcnow

JOB_ID_LENGTH = 64
TENANT_LENGTH = 256
CUSTOM_ID_LENGTH = 256
WEBHOOK_URL_LENGTH = 2048
TRACE_PARENT_LENGTH = 128


class JobRow(Base):
    """A batch of items; its item counts per state come from `job_items`."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_created_at", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(JOB_ID_LENGTH), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), index=True)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    webhook_url: Mapped[str] = mapped_column(String(WEBHOOK_URL_LENGTH), default="")
    trace_parent: Mapped[str] = mapped_column(String(TRACE_PARENT_LENGTH), default="")
    total_items: Mapped[int] = mapped_column(Integer)


class JobItemRow(Base):
    """One request of a job, leased by one gateway at a time, and its result."""

    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "custom_id", name="uq_job_items_job_id_custom_id"),
        Index("ix_job_items_job_id_state", "job_id", "state"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    item_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    custom_id: Mapped[str] = mapped_column(String(CUSTOM_ID_LENGTH))
    kind: Mapped[str] = mapped_column(String(16))
    request: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str] = mapped_column(String(128), default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    result: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    error_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error_message: Mapped[str] = mapped_column(Text, default="")
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class JobWebhookEventRow(Base):
    """A webhook to deliver (the outbox): pending until delivered or given up."""

    __tablename__ = "job_webhook_events"
    __table_args__ = (
        Index("ix_job_webhook_events_state_next_attempt_at", "state", "next_attempt_at"),
    )

    webhook_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(16))
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class TenantWebhookSecretRow(Base):
    """A tenant's Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""

    __tablename__ = "tenant_webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
