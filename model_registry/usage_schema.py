"""Usage accounting tables (migration 0005), beside `schema.py`'s on the same metadata.

Counters are per (tenant, model, model version, UTC day); `usage_batches` holds the id of every
gateway batch applied, in the same transaction as its counts, so a batch delivered twice counts
once. Tenants are names, not references to `tenants`: a gateway's FLEET_API_KEYS tenants have
no row there.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, String
from sqlalchemy.orm import Mapped, mapped_column

from model_registry.schema import Base, UtcDateTime, utcnow

TENANT_LENGTH = 256
REASON_LENGTH = 64


class UsageDaily(Base):
    """Requests that ended with a result, and their tokens."""

    __tablename__ = "usage_daily"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageRefusal(Base):
    """Requests admission refused, by reason (queue_full, requests_per_minute, Unavailable...)."""

    __tablename__ = "usage_refusals"

    tenant: Mapped[str] = mapped_column(String(TENANT_LENGTH), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(REASON_LENGTH), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)


class UsageBatchApplied(Base):
    """A gateway batch whose counts are in the tables above."""

    __tablename__ = "usage_batches"

    batch_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
