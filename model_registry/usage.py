"""Usage in the database: the gateways' batches applied once each, and read back per day.

`apply` adds a list of batches in one transaction: each batch's id goes into `usage_batches`
first, and a batch whose id is already there (delivered again: a redelivered or re-claimed
stream entry, a gateway's retried write) adds nothing. Counters are upserted (INSERT ... ON
CONFLICT DO UPDATE, on SQLite and PostgreSQL alike) in key order, so concurrent registry
replicas never deadlock on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.dialects import postgresql, sqlite

from fleet_common.usage_events import UsageBatch, UsageCounts, UsageKey
from model_registry.usage_schema import (
    REASON_LENGTH,
    TENANT_LENGTH,
    UsageBatchApplied,
    UsageDaily,
    UsageRefusal,
)

#: How long an applied batch's id is kept: far longer than any entry waits in the stream.
BATCH_ID_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class UsageRow:
    """One tenant's usage of one model version on one UTC day."""

    day: date
    tenant: str
    model: str
    model_version: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class UsageStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self._engine = engine
        self._clock = clock
        dialects = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
        if engine.dialect.name not in dialects:
            raise ValueError(f"usage accounting supports SQLite and PostgreSQL, not "
                             f"{engine.dialect.name}")
        self._insert = dialects[engine.dialect.name]

    def apply(self, batches: Sequence[UsageBatch]) -> int:
        """Adds the batches not applied before, in one transaction; returns how many it added."""
        if not batches:
            return 0
        now = self._clock()
        with self._engine.begin() as db:
            fresh = [b for b in sorted(batches, key=lambda b: b.batch_id)
                     if self._first_time(db, b.batch_id, now)]
            counts: dict[UsageKey, UsageCounts] = {}
            for batch in fresh:
                for key, delta in batch.counts.items():
                    counts.setdefault(_fitted(key), UsageCounts()).add(delta)
            for key in sorted(counts):
                self._add(db, key, counts[key])
        return len(fresh)

    def _first_time(self, db: Connection, batch_id: str, now: datetime) -> bool:
        statement = self._insert(UsageBatchApplied).values(batch_id=batch_id, applied_at=now)
        # RETURNING, not rowcount: psycopg reports -1 for an INSERT ... ON CONFLICT.
        inserted = db.execute(statement.on_conflict_do_nothing(index_elements=["batch_id"])
                              .returning(UsageBatchApplied.batch_id))
        return inserted.first() is not None

    def _add(self, db: Connection, key: UsageKey, counts: UsageCounts) -> None:
        where = {"tenant": key.tenant, "day": key.day, "model": key.model,
                 "model_version": key.model_version}
        if counts.requests or counts.prompt_tokens or counts.completion_tokens:
            self._upsert(db, UsageDaily, where, {"requests": counts.requests,
                                                 "prompt_tokens": counts.prompt_tokens,
                                                 "completion_tokens": counts.completion_tokens})
        for reason in sorted(counts.refusals):
            self._upsert(db, UsageRefusal, {**where, "reason": reason[:REASON_LENGTH]},
                         {"count": counts.refusals[reason]})

    def _upsert(self, db: Connection, table: Any, key: dict[str, Any],
                increments: dict[str, int]) -> None:
        statement = self._insert(table).values(**key, **increments)
        columns = table.__table__.c
        db.execute(statement.on_conflict_do_update(
            index_elements=list(key),
            set_={name: columns[name] + statement.excluded[name] for name in increments}))

    def forget_batches(self) -> int:
        """Drops the ids of batches applied more than BATCH_ID_RETENTION ago."""
        with self._engine.begin() as db:
            result = db.execute(delete(UsageBatchApplied).where(
                UsageBatchApplied.applied_at < self._clock() - BATCH_ID_RETENTION))
        return int(result.rowcount or 0)

    def usage(self, tenant: str | None, since: date, until: date) -> list[UsageRow]:
        """Each day, tenant (all when None), model and version with usage from `since` to
        `until` (both included), in that order."""
        rows: dict[tuple[date, str, str, str], dict[str, Any]] = {}

        def where(table: Any) -> Iterable[Any]:
            yield table.day >= since
            yield table.day <= until
            if tenant is not None:
                yield table.tenant == tenant

        with self._engine.connect() as db:
            for r in db.execute(select(UsageDaily).where(*where(UsageDaily))).mappings():
                rows.setdefault(_row_key(r), {"refusals": {}}).update(
                    requests=r["requests"], prompt_tokens=r["prompt_tokens"],
                    completion_tokens=r["completion_tokens"])
            for r in db.execute(select(UsageRefusal).where(*where(UsageRefusal))).mappings():
                rows.setdefault(_row_key(r), {"refusals": {}})["refusals"][r["reason"]] = \
                    r["count"]
        return [UsageRow(day, tenant_name, model, version, **values)
                for (day, tenant_name, model, version), values in sorted(rows.items())]


def _row_key(row: Any) -> tuple[date, str, str, str]:
    return row["day"], row["tenant"], row["model"], row["model_version"]


def _fitted(key: UsageKey) -> UsageKey:
    """A key whose tenant fits its column (a FLEET_API_KEYS tenant may be any string)."""
    if len(key.tenant) <= TENANT_LENGTH:
        return key
    return UsageKey(key.tenant[:TENANT_LENGTH], key.model, key.model_version, key.day)
