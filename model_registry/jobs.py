"""Batch jobs in the database: created whole, leased item by item to the gateways, one result
recorded per item, expired at the end of their completion window, purged after retention.

Every public method is one transaction. A method taking a tenant sees only that tenant's jobs:
another tenant's job id is not found.

Gateways lease items (`lease_items`) and record each item's result (`finish_item`) with the
attempt number its lease gave: a lease that expires (its gateway died) is redelivered with the
next attempt number, and the stale attempt's result is refused, so every item gets exactly one
result. The job ends in the transaction that finishes its last item, and its webhook event is
added to the outbox (`job_webhook_events`) in that same transaction.

Concurrency. On PostgreSQL, lessees lock the jobs they lease from (SELECT ... FOR UPDATE SKIP
LOCKED), so two replicas never lease from one job at once (which keeps `window_per_job` exact)
and never wait for each other; methods that change a job lock its row first. On SQLite every
write transaction takes the database's write lock at its start (BEGIN IMMEDIATE).

Item counts per state are counted from `job_items` (by the (job_id, state) index), in the
statement that reads the job, so they are always exact.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import groupby, islice
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Select,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from model_registry.jobs_schema import (
    CUSTOM_ID_LENGTH,
    JOB_ID_LENGTH,
    TENANT_LENGTH,
    TRACE_PARENT_LENGTH,
    WEBHOOK_URL_LENGTH,
    JobItemRow,
    JobRow,
    JobWebhookEventRow,
    TenantWebhookSecretRow,
)
from model_registry.schema import utcnow

MAX_ITEMS = 10_000
ITEM_KINDS = ("complete", "infill", "chat")


# gRPC status code numbers, recorded on the items a cancel or an expiry ends.
CANCELLED_CODE = 1
DEADLINE_EXCEEDED_CODE = 4


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ItemState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class WebhookState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"


TERMINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED,
                       JobState.EXPIRED)
LEASABLE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
UNFINISHED_ITEM_STATES = (ItemState.QUEUED, ItemState.RUNNING)
FINISHED_ITEM_STATES = tuple(s for s in ItemState if s not in UNFINISHED_ITEM_STATES)
RESULT_STATES = (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED)

_WEBHOOK_ID_NAMESPACE = uuid.UUID("6f1c3f0e-5d0a-4c55-9a43-0d6c1b7e2a10")
_CHUNK = 500  # ids per IN (...) list


class DuplicateCustomId(ValueError):
    def __init__(self, custom_id: str, first_index: int, second_index: int) -> None:
        super().__init__(f"custom_id {custom_id!r} is used by items {first_index} and "
                         f"{second_index}; custom_ids must be unique within a job")
        self.custom_id = custom_id
        self.first_index = first_index
        self.second_index = second_index


class JobIdTaken(ValueError):
    pass


class TooManyUnfinished(ValueError):
    """The job would take its tenant's unfinished items past its limit."""

    def __init__(self, unfinished: int, adding: int, limit: int) -> None:
        super().__init__(f"{unfinished} unfinished items and {adding} more would pass the "
                         f"limit of {limit}")
        self.unfinished, self.adding, self.limit = unfinished, adding, limit


class InvalidPageToken(ValueError):
    pass


@dataclass(frozen=True)
class NewItem:
    custom_id: str
    kind: str  # one of ITEM_KINDS
    request: bytes  # a serialized request message, opaque here


@dataclass(frozen=True)
class JobRecord:
    id: str
    tenant: str
    state: JobState
    priority: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    webhook_url: str
    trace_parent: str
    total_items: int
    counts: dict[ItemState, int]  # every state, 0 included


@dataclass(frozen=True)
class ItemRecord:
    job_id: str
    index: int
    custom_id: str
    kind: str
    request: bytes
    state: ItemState
    attempts: int
    lease_owner: str
    result: bytes | None
    error_code: int | None
    error_message: str
    # Of its job, set on the items lease_items returns (what the gateway running them needs).
    tenant: str = ""
    expires_at: datetime | None = None
    trace_parent: str = ""


@dataclass(frozen=True)
class WebhookEvent:
    webhook_id: str
    job_id: str
    tenant: str
    url: str
    event_type: str
    payload: str
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class WebhookDelivery:
    """Where a job's end event stands."""

    webhook_id: str
    event_type: str
    state: WebhookState
    attempts: int
    last_status: int | None
    last_error: str
    next_attempt_at: datetime


class JobStore:
    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        dialects = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
        if engine.dialect.name not in dialects:
            raise ValueError(f"jobs support SQLite and PostgreSQL, not {engine.dialect.name}")
        self._engine = engine
        self._clock = clock
        self._insert = dialects[engine.dialect.name]
        self._sqlite = engine.dialect.name == "sqlite"

    # Jobs, as their tenant sees them.

    def create_job(self, tenant: str, items: Sequence[NewItem], *, priority: int,
                   completion_window: timedelta, webhook_url: str = "", trace_parent: str = "",
                   job_id: str | None = None, max_unfinished: int = 0) -> JobRecord:
        """Stores a job and all its items, QUEUED. Raises DuplicateCustomId, JobIdTaken, or
        ValueError for anything else invalid; TooManyUnfinished when `max_unfinished` (0: no
        limit) would be crossed by the tenant's unfinished items, counted in the same
        transaction as the insert (the tenant's submissions are serialized for it)."""
        job_id = job_id if job_id is not None else f"job_{uuid.uuid4().hex}"
        _check_job(tenant, job_id, completion_window, webhook_url, trace_parent)
        _check_items(items)
        now = self._now()
        job = JobRecord(id=job_id, tenant=tenant, state=JobState.QUEUED, priority=priority,
                        created_at=now, started_at=None, finished_at=None,
                        expires_at=now + completion_window, webhook_url=webhook_url,
                        trace_parent=trace_parent, total_items=len(items),
                        counts=_counts({ItemState.QUEUED: len(items)}))
        with self._write() as db:
            if max_unfinished:
                self._check_unfinished(db, tenant, len(items), max_unfinished)
            try:
                db.execute(insert(JobRow).values(
                    id=job.id, tenant=tenant, state=job.state, priority=priority,
                    created_at=now, expires_at=job.expires_at, webhook_url=webhook_url,
                    trace_parent=trace_parent, total_items=job.total_items))
            except IntegrityError:
                raise JobIdTaken(f"job id {job_id!r} is taken") from None
            db.execute(insert(JobItemRow), [_item_row(job_id, index, item)
                                            for index, item in enumerate(items)])
        return job

    def _check_unfinished(self, db: Connection, tenant: str, adding: int, limit: int) -> None:
        if not self._sqlite:  # SQLite's BEGIN IMMEDIATE already serializes every writer
            db.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"jobs:{tenant}"))))
        unfinished = _unfinished_items(db, tenant)
        if unfinished + adding > limit:
            raise TooManyUnfinished(unfinished, adding, limit)

    def get_job(self, tenant: str, job_id: str) -> JobRecord | None:
        with self._engine.connect() as db:
            row = db.execute(_job_query().where(JobRow.id == job_id,
                                                JobRow.tenant == tenant)).first()
        return _job_record(row) if row is not None else None

    def list_jobs(self, tenant: str, *, states: Collection[JobState] = (), page_size: int,
                  page_token: str = "") -> tuple[list[JobRecord], str]:
        """The tenant's jobs in `states` (all when empty), newest first, and the token of the
        next page ("" after the last)."""
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        query = _job_query().where(JobRow.tenant == tenant)
        if states:
            query = query.where(JobRow.state.in_([JobState(s) for s in states]))
        if page_token:
            query = query.where(_after(*_decode_page_token(page_token)))
        query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(page_size + 1)
        with self._engine.connect() as db:
            jobs = [_job_record(row) for row in db.execute(query)]
        if len(jobs) <= page_size:
            return jobs, ""
        return jobs[:page_size], _page_token(jobs[page_size - 1])

    def cancel_job(self, tenant: str, job_id: str) -> JobRecord | None:
        """Cancels the queued items (and running ones whose lease expired: nobody runs them).
        The job is CANCELLED unless items still run: then CANCELLING until they end."""
        now = self._now()
        with self._write() as db:
            job = _lock_job(db, job_id, tenant=tenant)
            if job is None:
                return None
            if JobState(job.state) not in TERMINAL_JOB_STATES:
                _cancel_items(db, job_id, now)
                if _has_live_lease(db, job_id, now):
                    _set_job_state(db, job_id, JobState.CANCELLING)
                else:
                    self._end_job(db, job_id, JobState.CANCELLED, now)
            return _read_job(db, job_id)

    def results(self, tenant: str, job_id: str, *, after_index: int = -1,
                limit: int = 500) -> list[ItemRecord]:
        """The job's finished items after `after_index`, in index order ([] for a job the
        tenant does not have)."""
        query = (select(*JobItemRow.__table__.columns)
                 .join(JobRow, JobRow.id == JobItemRow.job_id)
                 .where(JobRow.id == job_id, JobRow.tenant == tenant,
                        JobItemRow.state.in_(FINISHED_ITEM_STATES),
                        JobItemRow.item_index > after_index)
                 .order_by(JobItemRow.item_index).limit(limit))
        with self._engine.connect() as db:
            return [_item_record(row) for row in db.execute(query)]

    def webhook_deliveries(self, job_ids: Collection[str]) -> dict[str, WebhookDelivery]:
        """The end event of each of these jobs that has one."""
        found: dict[str, WebhookDelivery] = {}
        with self._engine.connect() as db:
            for chunk in _chunks(sorted(job_ids)):
                for row in db.execute(select(*JobWebhookEventRow.__table__.columns).where(
                        JobWebhookEventRow.job_id.in_(chunk))):
                    found[row.job_id] = WebhookDelivery(
                        row.webhook_id, row.event_type, WebhookState(row.state), row.attempts,
                        row.last_status, row.last_error, row.next_attempt_at)
        return found

    def unfinished_items(self, tenant: str) -> int:
        """The tenant's items queued or running, over all its jobs (max_queued_job_items)."""
        with self._engine.connect() as db:
            return _unfinished_items(db, tenant)

    # The gateways' side: leases and results.

    def job_states(self, job_ids: Collection[str]) -> dict[str, JobState]:
        """The state of each of these jobs (a purged one is missing)."""
        found: dict[str, JobState] = {}
        with self._engine.connect() as db:
            for chunk in _chunks(sorted(job_ids)):
                found.update((row.id, JobState(row.state)) for row in db.execute(
                    select(JobRow.id, JobRow.state).where(JobRow.id.in_(chunk))))
        return found

    def lease_items(self, owner: str, *, limit: int, lease: timedelta,
                    window_per_job: int) -> list[ItemRecord]:
        """Up to `limit` items to run: QUEUED ones, and RUNNING ones whose lease expired
        (redelivered, with the next attempt number). Shared out between tenants one item at a
        time: to the tenant with the fewest items under a live lease, ties to the oldest job,
        and in item order within a job. A job never has more than `window_per_job` items under
        a live lease."""
        if limit < 1 or window_per_job < 1:
            return []
        now = self._now()
        leased: list[ItemRecord] = []
        short: set[str] = set()  # jobs that gave less than their share: not asked again
        with self._write() as db:
            while len(leased) < limit:
                wanted = limit - len(leased)
                shares = _fair_shares(_lease_candidates(db, now, window_per_job, wanted, short),
                                      _in_flight_by_tenant(db, now), wanted)
                if not shares:
                    break
                for job_id, share in shares.items():
                    taken = _lease_share(db, job_id, share, owner, now, now + lease,
                                         window_per_job)
                    leased += taken
                    if len(taken) < share:
                        short.add(job_id)
        return leased

    def renew_leases(self, owner: str, keys: Sequence[tuple[str, int]],
                     lease: timedelta) -> int:
        """Extends the owner's live leases on these (job id, item index) keys; returns how many.
        An expired lease is lost (its item may be redelivered) and is not renewed."""
        return self._set_lease_expiry(owner, keys, lambda now: now + lease)

    def release_leases(self, owner: str, keys: Sequence[tuple[str, int]]) -> int:
        """Ends the owner's live leases on these items now, for a gateway stopping gracefully:
        any gateway leases them again at once (as redelivered, the next attempt) rather than
        after the lease lapses. Returns how many were released."""
        return self._set_lease_expiry(owner, keys, lambda now: now)

    def _set_lease_expiry(self, owner: str, keys: Sequence[tuple[str, int]],
                          expiry: Callable[[datetime], datetime]) -> int:
        now = self._now()
        changed = 0
        with self._write() as db:
            for job_id, group in groupby(sorted(set(keys)), key=lambda key: key[0]):
                indexes = [index for _, index in group]
                for chunk in _chunks(_lockable_leases(db, owner, job_id, indexes, now)):
                    changed += db.execute(update(JobItemRow).where(
                        JobItemRow.job_id == job_id, JobItemRow.item_index.in_(chunk))
                        .values(lease_expires_at=expiry(now))).rowcount
        return changed

    def finish_item(self, job_id: str, index: int, *, attempt: int, state: ItemState,
                    result: bytes | None = None, error_code: int | None = None,
                    error_message: str = "") -> bool:
        """Records the item's result if it is RUNNING at this attempt; False (and nothing
        changes) otherwise. Finishing the job's last item ends the job."""
        if state not in RESULT_STATES:
            raise ValueError(f"an item's result state is one of "
                             f"{[str(s) for s in RESULT_STATES]}, not {state!r}")
        now = self._now()
        with self._write() as db:
            job = _lock_job(db, job_id)
            if job is None:
                return False
            recorded = db.execute(update(JobItemRow).where(
                JobItemRow.job_id == job_id, JobItemRow.item_index == index,
                JobItemRow.state == ItemState.RUNNING, JobItemRow.attempts == attempt,
            ).values(state=state, result=result, error_code=error_code,
                     error_message=error_message, finished_at=now,
                     lease_expires_at=None)).rowcount == 1
            if recorded and not _has_unfinished_items(db, job_id):
                self._end_job(db, job_id, _final_state(db, job_id, JobState(job.state)), now)
        return recorded

    # Housekeeping.

    def expire_due(self, *, limit: int = 100) -> list[JobRecord]:
        """Ends up to `limit` jobs whose completion window has passed: their unfinished items
        EXPIRED (results recorded are kept), the job EXPIRED. Also ends CANCELLING jobs whose
        remaining items' leases all expired (their gateway died): CANCELLED. Returns the jobs
        ended."""
        now = self._now()
        ended: list[JobRecord] = []
        with self._write() as db:
            for job_id in _due_jobs(db, now, limit):
                _expire_items(db, job_id, now)
                ended.append(self._end_job(db, job_id, JobState.EXPIRED, now))
            for job_id in _abandoned_cancellations(db, now, limit):
                _cancel_items(db, job_id, now)
                ended.append(self._end_job(db, job_id, JobState.CANCELLED, now))
        return ended

    def purge(self, older_than: timedelta, *, limit: int = 1000) -> int:
        """Deletes up to `limit` jobs that ended more than `older_than` ago, with their items
        and webhook events; returns how many jobs (call again while it returns `limit`)."""
        cutoff = self._now() - older_than
        with self._write() as db:
            job_ids = list(db.execute(
                select(JobRow.id)
                .where(JobRow.state.in_(TERMINAL_JOB_STATES), JobRow.finished_at < cutoff)
                .order_by(JobRow.finished_at).limit(limit)
                .with_for_update(skip_locked=True)).scalars())
            for chunk in _chunks(job_ids):
                for table in (JobWebhookEventRow, JobItemRow):
                    db.execute(delete(table).where(table.job_id.in_(chunk)))
                db.execute(delete(JobRow).where(JobRow.id.in_(chunk)))
        return len(job_ids)

    # Webhooks: the outbox and the tenants' signing secrets.

    def due_webhooks(self, limit: int, *,
                     claim_for: timedelta = timedelta(minutes=1)) -> list[WebhookEvent]:
        """Up to `limit` pending events due now, oldest due first. They are claimed: not due
        again for `claim_for`, so another gateway does not deliver them meanwhile."""
        now = self._now()
        with self._write() as db:
            rows = db.execute(
                select(*JobWebhookEventRow.__table__.columns, JobRow.webhook_url)
                .join(JobRow, JobRow.id == JobWebhookEventRow.job_id)
                .where(JobWebhookEventRow.state == WebhookState.PENDING,
                       JobWebhookEventRow.next_attempt_at <= now)
                .order_by(JobWebhookEventRow.next_attempt_at, JobWebhookEventRow.webhook_id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=JobWebhookEventRow)).all()
            if rows:
                db.execute(update(JobWebhookEventRow)
                           .where(JobWebhookEventRow.webhook_id.in_([r.webhook_id for r in rows]))
                           .values(next_attempt_at=now + claim_for))
        return [_webhook_event(row) for row in rows]

    def record_webhook_attempt(self, webhook_id: str, *, delivered: bool, status: int | None,
                               error: str, next_attempt_at: datetime | None,
                               gave_up: bool = False) -> bool:
        """Records a delivery attempt of a pending event: delivered, given up, or to retry at
        `next_attempt_at`. False when the event is not pending (or unknown)."""
        values: dict[str, Any] = {"attempts": JobWebhookEventRow.attempts + 1,
                                  "last_status": status, "last_error": error}
        if delivered:
            values["state"] = WebhookState.DELIVERED
        elif gave_up:
            values["state"] = WebhookState.GAVE_UP
        elif next_attempt_at is None:
            raise ValueError("an attempt neither delivered nor given up needs next_attempt_at")
        else:
            values["next_attempt_at"] = next_attempt_at
        with self._write() as db:
            return db.execute(update(JobWebhookEventRow).where(
                JobWebhookEventRow.webhook_id == webhook_id,
                JobWebhookEventRow.state == WebhookState.PENDING).values(**values)).rowcount == 1

    def webhook_secret(self, tenant: str) -> str:
        """The tenant's webhook signing secret, created on first use."""
        query = select(TenantWebhookSecretRow.secret).where(
            TenantWebhookSecretRow.tenant == tenant)
        with self._engine.connect() as db:
            secret = db.execute(query).scalar()
        if secret is not None:
            return secret
        with self._write() as db:
            db.execute(self._insert(TenantWebhookSecretRow)
                       .values(tenant=tenant, secret=_new_webhook_secret(),
                               created_at=self._now())
                       .on_conflict_do_nothing(index_elements=["tenant"]))
            return db.execute(query).scalar_one()

    # Internals.

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.begin() as db:
            if self._sqlite:  # the write lock now, not at the first write after our reads
                db.exec_driver_sql("BEGIN IMMEDIATE")
            yield db

    def _end_job(self, db: Connection, job_id: str, state: JobState,
                 now: datetime) -> JobRecord:
        db.execute(update(JobRow).where(JobRow.id == job_id)
                   .values(state=state, finished_at=now))
        job = _read_job(db, job_id)
        if job.webhook_url:
            _add_webhook_event(db, job, now)
        return job


# Reading jobs and items.

def _job_query() -> Select[Any]:
    counts = [select(func.count()).where(JobItemRow.job_id == JobRow.id,
                                         JobItemRow.state == state)
              .scalar_subquery().label(f"count_{state}") for state in ItemState]
    return select(*JobRow.__table__.columns, *counts)


def _read_job(db: Connection, job_id: str) -> JobRecord:
    return _job_record(db.execute(_job_query().where(JobRow.id == job_id)).one())


def _job_record(row: Row[Any]) -> JobRecord:
    values = row._mapping
    return JobRecord(
        id=values["id"], tenant=values["tenant"], state=JobState(values["state"]),
        priority=values["priority"], created_at=values["created_at"],
        started_at=values["started_at"], finished_at=values["finished_at"],
        expires_at=values["expires_at"], webhook_url=values["webhook_url"],
        trace_parent=values["trace_parent"], total_items=values["total_items"],
        counts={state: values[f"count_{state}"] for state in ItemState})


def _item_record(row: Row[Any]) -> ItemRecord:
    values = row._mapping
    return ItemRecord(
        job_id=values["job_id"], index=values["item_index"], custom_id=values["custom_id"],
        kind=values["kind"], request=values["request"], state=ItemState(values["state"]),
        attempts=values["attempts"], lease_owner=values["lease_owner"],
        result=values["result"], error_code=values["error_code"],
        error_message=values["error_message"])


def _unfinished_items(db: Connection, tenant: str) -> int:
    return int(db.execute(
        select(func.count()).select_from(JobItemRow)
        .join(JobRow, JobRow.id == JobItemRow.job_id)
        .where(JobRow.tenant == tenant,
               JobItemRow.state.in_([ItemState.QUEUED, ItemState.RUNNING]))).scalar_one())


def _counts(known: dict[ItemState, int]) -> dict[ItemState, int]:
    return {state: known.get(state, 0) for state in ItemState}


# Creating jobs.

def _check_job(tenant: str, job_id: str, completion_window: timedelta, webhook_url: str,
               trace_parent: str) -> None:
    # "" is the tenant of a fleet without API keys (every caller), as everywhere else.
    if len(tenant) > TENANT_LENGTH:
        raise ValueError(f"tenant must have at most {TENANT_LENGTH} characters, got {tenant!r}")
    if not 0 < len(job_id) <= JOB_ID_LENGTH:
        raise ValueError(f"job_id must have 1 to {JOB_ID_LENGTH} characters, got {job_id!r}")
    if completion_window <= timedelta(0):
        raise ValueError(f"completion_window must be positive, got {completion_window}")
    if len(webhook_url) > WEBHOOK_URL_LENGTH:
        raise ValueError(f"webhook_url is longer than {WEBHOOK_URL_LENGTH} characters")
    if len(trace_parent) > TRACE_PARENT_LENGTH:
        raise ValueError(f"trace_parent is longer than {TRACE_PARENT_LENGTH} characters")


def _check_items(items: Sequence[NewItem]) -> None:
    if not 0 < len(items) <= MAX_ITEMS:
        raise ValueError(f"a job has 1 to {MAX_ITEMS} items, got {len(items)}")
    first_index: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.kind not in ITEM_KINDS:
            raise ValueError(f"item {index}: kind must be one of {ITEM_KINDS}, "
                             f"got {item.kind!r}")
        if len(item.custom_id) > CUSTOM_ID_LENGTH:
            raise ValueError(f"item {index}: custom_id is longer than {CUSTOM_ID_LENGTH} "
                             f"characters")
        if item.custom_id in first_index:
            raise DuplicateCustomId(item.custom_id, first_index[item.custom_id], index)
        first_index[item.custom_id] = index


def _item_row(job_id: str, index: int, item: NewItem) -> dict[str, Any]:
    return {"job_id": job_id, "item_index": index, "custom_id": item.custom_id,
            "kind": item.kind, "request": item.request, "state": ItemState.QUEUED,
            "attempts": 0, "lease_owner": "", "lease_expires_at": None, "result": None,
            "error_code": None, "error_message": "", "finished_at": None}


# Pages.

def _after(created_at: datetime, job_id: str) -> ColumnElement[bool]:
    """Rows after (created_at, job_id) in the newest-first order."""
    return or_(JobRow.created_at < created_at,
               and_(JobRow.created_at == created_at, JobRow.id < job_id))


def _page_token(last: JobRecord) -> str:
    position = json.dumps([last.created_at.isoformat(), last.id])
    return base64.urlsafe_b64encode(position.encode()).decode("ascii")


def _decode_page_token(token: str) -> tuple[datetime, str]:
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        created_at, job_id = position if isinstance(position, list) else (None, None)
        if isinstance(created_at, str) and isinstance(job_id, str):
            moment = datetime.fromisoformat(created_at)
            if moment.tzinfo is not None:
                return moment.astimezone(UTC), job_id
    except ValueError:  # not base64, not JSON, not a list of two, not a timestamp
        pass
    raise InvalidPageToken(f"invalid page token {token!r}")


# Leases.

def _live_lease(now: datetime) -> ColumnElement[bool]:
    return and_(JobItemRow.state == ItemState.RUNNING, JobItemRow.lease_expires_at > now)


def _expired_lease(now: datetime) -> ColumnElement[bool]:
    return and_(JobItemRow.state == ItemState.RUNNING, JobItemRow.lease_expires_at <= now)


def _leasable(now: datetime) -> ColumnElement[bool]:
    return or_(JobItemRow.state == ItemState.QUEUED, _expired_lease(now))


def _lease_candidates(db: Connection, now: datetime, window_per_job: int, limit: int,
                      passed: Collection[str]) -> list[Row[Any]]:
    """The jobs not in `passed` with items to lease and room in their window (`room`), each
    tenant's `limit` oldest (enough for `limit` items). Not locked."""
    live_leases = (select(func.count()).where(JobItemRow.job_id == JobRow.id, _live_lease(now))
                   .scalar_subquery())
    age = func.row_number().over(partition_by=JobRow.tenant,
                                 order_by=(JobRow.created_at, JobRow.id))
    jobs = (select(JobRow.id, JobRow.tenant, JobRow.created_at,
                   (window_per_job - live_leases).label("room"), age.label("age"))
            .where(JobRow.state.in_(LEASABLE_JOB_STATES), JobRow.expires_at > now,
                   JobRow.id.not_in(sorted(passed)),
                   exists().where(JobItemRow.job_id == JobRow.id, _leasable(now)),
                   live_leases < window_per_job)
            .subquery())
    return list(db.execute(select(jobs.c.id, jobs.c.tenant, jobs.c.created_at, jobs.c.room)
                           .where(jobs.c.age <= limit)))


def _in_flight_by_tenant(db: Connection, now: datetime) -> dict[str, int]:
    """Items under a live lease, per tenant that has any."""
    return dict(db.execute(
        select(JobRow.tenant, func.count())
        .join(JobItemRow, JobItemRow.job_id == JobRow.id)
        .where(JobRow.state.not_in(TERMINAL_JOB_STATES), _live_lease(now))
        .group_by(JobRow.tenant)).all())


def _fair_shares(candidates: Sequence[Row[Any]], in_flight: dict[str, int],
                 limit: int) -> Counter[str]:
    """How many items to lease from each job, the first served first: each item goes to the
    tenant that then has the fewest in flight, ties to the oldest job."""
    by_tenant = groupby(sorted(candidates, key=lambda job: (job.tenant, job.created_at, job.id)),
                        key=lambda job: job.tenant)
    slots = sorted(slot for tenant, jobs in by_tenant
                   for slot in _tenant_slots(jobs, in_flight.get(tenant, 0), limit))
    return Counter(job_id for _, _, job_id in slots[:limit])


def _tenant_slots(jobs: Iterable[Row[Any]], in_flight: int,
                  limit: int) -> Iterator[tuple[int, datetime, str]]:
    """The tenant's next `limit` items, oldest job first and each job up to its room, as
    (the tenant's items in flight once this one is leased, job created_at, job id)."""
    items = (job for job in jobs for _ in range(job.room))
    for count, job in enumerate(islice(items, limit), start=in_flight + 1):
        yield count, job.created_at, job.id


def _lease_share(db: Connection, job_id: str, share: int, owner: str, now: datetime,
                 until: datetime, window_per_job: int) -> list[ItemRecord]:
    """Up to `share` of the job's items, unless another transaction holds the job (on
    PostgreSQL) or it is no longer leasable."""
    locked = db.execute(select(JobRow.id)
                        .where(JobRow.id == job_id, JobRow.state.in_(LEASABLE_JOB_STATES),
                               JobRow.expires_at > now)
                        .with_for_update(skip_locked=True)).first()
    if locked is None:
        return []
    take = min(share, window_per_job - _live_lease_count(db, job_id, now))
    return _lease_from_job(db, job_id, owner, take, now, until) if take > 0 else []


def _live_lease_count(db: Connection, job_id: str, now: datetime) -> int:
    """Counted again once the job is locked: another lessee may have committed since the
    candidates were read."""
    return db.execute(select(func.count()).where(JobItemRow.job_id == job_id,
                                                 _live_lease(now))).scalar_one()


def _lease_from_job(db: Connection, job_id: str, owner: str, take: int, now: datetime,
                    until: datetime) -> list[ItemRecord]:
    indexes = list(db.execute(
        select(JobItemRow.item_index).where(JobItemRow.job_id == job_id, _leasable(now))
        .order_by(JobItemRow.item_index).limit(take)
        .with_for_update(skip_locked=True)).scalars())
    if not indexes:
        return []
    rows = db.execute(
        update(JobItemRow)
        .where(JobItemRow.job_id == job_id, JobItemRow.item_index.in_(indexes))
        .values(state=ItemState.RUNNING, lease_owner=owner, lease_expires_at=until,
                attempts=JobItemRow.attempts + 1)
        .returning(*JobItemRow.__table__.columns)).all()
    db.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == JobState.QUEUED)
               .values(state=JobState.RUNNING, started_at=now))
    job = db.execute(select(JobRow.tenant, JobRow.expires_at, JobRow.trace_parent)
                     .where(JobRow.id == job_id)).one()
    return sorted((replace(_item_record(row), tenant=job.tenant, expires_at=job.expires_at,
                           trace_parent=job.trace_parent) for row in rows),
                  key=lambda item: item.index)


def _lockable_leases(db: Connection, owner: str, job_id: str, indexes: list[int],
                     now: datetime) -> list[int]:
    """Of these items, those with the owner's live lease; on PostgreSQL locked, skipping rows
    another transaction is changing (finishing, expiring), so a renewal never waits."""
    found: list[int] = []
    for chunk in _chunks(indexes):
        found += db.execute(
            select(JobItemRow.item_index)
            .where(JobItemRow.job_id == job_id, JobItemRow.item_index.in_(chunk),
                   JobItemRow.lease_owner == owner, _live_lease(now))
            .with_for_update(skip_locked=True)).scalars()
    return found


# Changing jobs.

def _lock_job(db: Connection, job_id: str, *, tenant: str | None = None) -> Row[Any] | None:
    query = select(JobRow.id, JobRow.state).where(JobRow.id == job_id)
    if tenant is not None:
        query = query.where(JobRow.tenant == tenant)
    return db.execute(query.with_for_update()).first()


def _set_job_state(db: Connection, job_id: str, state: JobState) -> None:
    db.execute(update(JobRow).where(JobRow.id == job_id).values(state=state))


def _has_live_lease(db: Connection, job_id: str, now: datetime) -> bool:
    return db.execute(select(exists().where(JobItemRow.job_id == job_id,
                                            _live_lease(now)))).scalar_one()


def _has_unfinished_items(db: Connection, job_id: str) -> bool:
    return db.execute(select(exists().where(
        JobItemRow.job_id == job_id,
        JobItemRow.state.in_(UNFINISHED_ITEM_STATES)))).scalar_one()


def _final_state(db: Connection, job_id: str, state: JobState) -> JobState:
    if state == JobState.CANCELLING:
        return JobState.CANCELLED
    any_succeeded = db.execute(select(exists().where(
        JobItemRow.job_id == job_id, JobItemRow.state == ItemState.SUCCEEDED))).scalar_one()
    return JobState.SUCCEEDED if any_succeeded else JobState.FAILED


def _cancel_items(db: Connection, job_id: str, now: datetime) -> None:
    """Cancels the items nobody runs: queued, or running under an expired lease."""
    db.execute(update(JobItemRow).where(JobItemRow.job_id == job_id, _leasable(now))
               .values(state=ItemState.CANCELLED, finished_at=now, lease_expires_at=None,
                       error_code=CANCELLED_CODE, error_message="the job was cancelled"))


def _expire_items(db: Connection, job_id: str, now: datetime) -> None:
    db.execute(update(JobItemRow)
               .where(JobItemRow.job_id == job_id,
                      JobItemRow.state.in_(UNFINISHED_ITEM_STATES))
               .values(state=ItemState.EXPIRED, finished_at=now, lease_expires_at=None,
                       error_code=DEADLINE_EXCEEDED_CODE,
                       error_message="the job's completion window passed first"))


def _due_jobs(db: Connection, now: datetime, limit: int) -> list[str]:
    return list(db.execute(
        select(JobRow.id)
        .where(JobRow.state.in_([*LEASABLE_JOB_STATES, JobState.CANCELLING]),
               JobRow.expires_at <= now)
        .order_by(JobRow.expires_at, JobRow.id).limit(limit)
        .with_for_update(skip_locked=True)).scalars())


def _abandoned_cancellations(db: Connection, now: datetime, limit: int) -> list[str]:
    """CANCELLING jobs none of whose items is under a live lease."""
    return list(db.execute(
        select(JobRow.id)
        .where(JobRow.state == JobState.CANCELLING,
               ~exists().where(JobItemRow.job_id == JobRow.id, _live_lease(now)))
        .order_by(JobRow.created_at, JobRow.id).limit(limit)
        .with_for_update(skip_locked=True, of=JobRow)).scalars())


# Webhooks.

def _add_webhook_event(db: Connection, job: JobRecord, now: datetime) -> None:
    event_type = f"job.{job.state}"
    payload = {"type": event_type, "timestamp": _timestamp(now),
               "data": {"job_id": job.id, "state": str(job.state),
                        "counts": {str(state): n for state, n in job.counts.items()},
                        "total_items": job.total_items}}
    db.execute(insert(JobWebhookEventRow).values(
        webhook_id=webhook_id(job.id, event_type), job_id=job.id, tenant=job.tenant,
        event_type=event_type, payload=json.dumps(payload), created_at=now, attempts=0,
        next_attempt_at=now, state=WebhookState.PENDING, last_status=None, last_error=""))


def webhook_id(job_id: str, event_type: str) -> str:
    """The Standard Webhooks message id of a job's event: the same for every delivery."""
    return "msg_" + uuid.uuid5(_WEBHOOK_ID_NAMESPACE, f"{job_id}/{event_type}").hex


def _webhook_event(row: Row[Any]) -> WebhookEvent:
    values = row._mapping
    return WebhookEvent(
        webhook_id=values["webhook_id"], job_id=values["job_id"], tenant=values["tenant"],
        url=values["webhook_url"], event_type=values["event_type"],
        payload=values["payload"], attempts=values["attempts"],
        created_at=values["created_at"])


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]
