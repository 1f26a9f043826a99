"""The batch job store on SQLite and PostgreSQL: whole jobs created at once, items leased to
gateways with a window per job and redelivered when a lease expires, exactly one result per
item, the job's end and its webhook event in one transaction, cancellation, expiry, purge,
pagination, tenant isolation, and several lessees at once on the same database."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, inspect, text

from model_registry import jobs as jobs_module
from model_registry.database import MIGRATIONS_DIR, migrate, open_engine
from model_registry.jobs import (
    DuplicateCustomId,
    InvalidPageToken,
    ItemRecord,
    ItemState,
    JobIdTaken,
    JobRecord,
    JobState,
    JobStore,
    NewItem,
    TooManyUnfinished,
    webhook_id,
)
from model_registry.schema import Base

pytestmark = pytest.mark.timeout(180)

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
JOB_TABLES = ("jobs", "job_items", "job_webhook_events", "tenant_webhook_secrets")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def jobs(engine: Engine, clock: Clock) -> JobStore:
    migrate(engine)
    return JobStore(engine, clock=clock)


@pytest.fixture
def second_engine(engine: Engine) -> Iterator[Engine]:
    """Another engine on the same database: another gateway replica's connections."""
    other = open_engine(engine.url.render_as_string(hide_password=False))
    yield other
    other.dispose()


def new_items(n: int, prefix: str = "req") -> list[NewItem]:
    return [NewItem(f"{prefix}-{i}", "complete", f"request {i}".encode()) for i in range(n)]


def create(jobs: JobStore, n: int = 3, tenant: str = "acme", *,
           window: timedelta = timedelta(hours=24), **options: Any) -> JobRecord:
    return jobs.create_job(tenant, new_items(n), priority=options.pop("priority", 1),
                           completion_window=window, **options)


def lease(jobs: JobStore, owner: str = "gw-a", *, limit: int = 100,
          window: int = 100) -> list[ItemRecord]:
    return jobs.lease_items(owner, limit=limit, lease=LEASE, window_per_job=window)


def keys(items: list[ItemRecord]) -> list[tuple[str, int]]:
    return [(item.job_id, item.index) for item in items]


def succeed(jobs: JobStore, item: ItemRecord, result: bytes = b"ok") -> bool:
    return jobs.finish_item(item.job_id, item.index, attempt=item.attempts,
                            state=ItemState.SUCCEEDED, result=result)


def counts(**known: int) -> dict[ItemState, int]:
    return {state: known.get(state.value, 0) for state in ItemState}


def rows(engine: Engine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as db:
        return [tuple(row) for row in db.execute(text(sql), params)]


def outbox(engine: Engine) -> list[tuple[Any, ...]]:
    return rows(engine, "SELECT job_id, event_type, state FROM job_webhook_events "
                        "ORDER BY created_at, job_id")


# Schema.

def test_the_migration_creates_the_models_tables_and_downgrade_drops_them(
        jobs: JobStore, engine: Engine) -> None:
    def jobs_tables(obj: Any, name: str | None, type_: str, _reflected: bool,
                    _compare_to: Any) -> bool:
        table = name if type_ == "table" else getattr(obj, "table", None)
        return (table if isinstance(table, str) else getattr(table, "name", None)) in JOB_TABLES

    metadata = MetaData()
    for table in JOB_TABLES:
        Base.metadata.tables[table].to_metadata(metadata)
    with engine.connect() as db:
        context = MigrationContext.configure(db, opts={"include_object": jobs_tables,
                                                       "compare_type": True})
        assert compare_metadata(context, metadata) == []
    assert {"ix_job_items_job_id_state"} <= {i["name"] for i in inspect(engine)
                                             .get_indexes("job_items")}

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as db:
        config.attributes["connection"] = db
        command.downgrade(config, "0005")
    assert not set(JOB_TABLES) & set(inspect(engine).get_table_names())
    migrate(engine)
    assert set(JOB_TABLES) <= set(inspect(engine).get_table_names())


# Creating and reading jobs.

def test_a_created_job_is_queued_with_all_its_items(jobs: JobStore, engine: Engine) -> None:
    job = create(jobs, 3, priority=2, webhook_url="https://bot.example/hook",
                 trace_parent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")

    assert job.id.startswith("job_") and len(job.id) == 36
    assert (job.tenant, job.state, job.priority, job.total_items) == ("acme", "queued", 2, 3)
    assert (job.created_at, job.expires_at) == (T0, T0 + timedelta(hours=24))
    assert job.started_at is None and job.finished_at is None
    assert job.counts == counts(queued=3)
    assert jobs.get_job("acme", job.id) == job
    assert rows(engine, "SELECT item_index, custom_id, kind, request, state, attempts "
                        "FROM job_items ORDER BY item_index") == [
        (i, f"req-{i}", "complete", f"request {i}".encode(), "queued", 0) for i in range(3)]
    assert jobs.get_job("acme", "job_unknown") is None


def test_ten_thousand_items_in_one_create(jobs: JobStore, engine: Engine) -> None:
    items = [NewItem(f"review-{i}", ("complete", "infill", "chat")[i % 3], bytes(200))
             for i in range(10_000)]
    started = time.perf_counter()
    job = jobs.create_job("acme", items, priority=1, completion_window=timedelta(hours=24))
    elapsed = time.perf_counter() - started
    print(f"\n10,000-item create_job on {engine.dialect.name}: {elapsed:.3f} s")  # not asserted

    assert jobs.get_job("acme", job.id).counts == counts(queued=10_000)
    assert rows(engine, "SELECT count(*), min(item_index), max(item_index) FROM job_items") \
        == [(10_000, 0, 9_999)]
    assert [i.custom_id for i in lease(jobs, limit=3)] == ["review-0", "review-1", "review-2"]


def test_invalid_jobs_store_nothing(jobs: JobStore) -> None:
    items = new_items(5)
    items[3] = NewItem("req-1", "chat", b"")
    with pytest.raises(DuplicateCustomId, match=r"'req-1' is used by items 1 and 3") as caught:
        jobs.create_job("acme", items, priority=1, completion_window=timedelta(hours=1))
    assert (caught.value.custom_id, caught.value.first_index, caught.value.second_index) \
        == ("req-1", 1, 3)
    with pytest.raises(ValueError, match="1 to 10000 items, got 0"):
        jobs.create_job("acme", [], priority=1, completion_window=timedelta(hours=1))
    with pytest.raises(ValueError, match="kind must be one of"):
        jobs.create_job("acme", [NewItem("a", "embed", b"")], priority=1,
                        completion_window=timedelta(hours=1))
    with pytest.raises(ValueError, match="completion_window must be positive"):
        create(jobs, window=timedelta(0))
    assert jobs.list_jobs("acme", page_size=10) == ([], "")

    taken = create(jobs, job_id="job_mine")
    with pytest.raises(JobIdTaken):
        create(jobs, job_id="job_mine")
    assert jobs.list_jobs("acme", page_size=10) == ([taken], "")


def test_a_tenant_sees_only_its_own_jobs(jobs: JobStore, clock: Clock) -> None:
    mine = create(jobs, 2, tenant="acme", webhook_url="https://acme.example/hook")
    clock.advance(seconds=1)
    theirs = create(jobs, 2, tenant="globex")  # the same custom_ids: unique within a job only
    [first, *_] = lease(jobs, limit=1)
    assert first.job_id == mine.id and succeed(jobs, first)

    assert jobs.get_job("globex", mine.id) is None
    assert jobs.list_jobs("globex", page_size=10) == ([jobs.get_job("globex", theirs.id)], "")
    assert jobs.results("globex", mine.id) == []
    assert [r.custom_id for r in jobs.results("acme", mine.id)] == ["req-0"]
    assert jobs.cancel_job("globex", mine.id) is None
    assert jobs.get_job("acme", mine.id).state == JobState.RUNNING
    assert jobs.cancel_job("acme", theirs.id) is None
    assert jobs.get_job("globex", theirs.id).state == JobState.QUEUED
    assert jobs.webhook_secret("acme") != jobs.webhook_secret("globex")


def test_pages_newest_first_filtered_by_state(jobs: JobStore, clock: Clock) -> None:
    created = []
    for i in range(5):
        created.append(create(jobs, 1))
        if i != 2:  # jobs 2 and 3 share their created_at: the id breaks the tie
            clock.advance(seconds=1)
    create(jobs, 1, tenant="globex")
    newest_first = sorted(created, key=lambda j: (j.created_at, j.id), reverse=True)

    pages, token = [], ""
    while True:
        page, token = jobs.list_jobs("acme", page_size=2, page_token=token)
        pages.append([j.id for j in page])
        if not token:
            break
    assert pages == [[j.id for j in newest_first[i:i + 2]] for i in (0, 2, 4)]

    for job in (created[1], created[3], created[4]):
        jobs.cancel_job("acme", job.id)
    page, token = jobs.list_jobs("acme", states=[JobState.CANCELLED], page_size=2)
    assert [j.id for j in page] == [created[4].id, created[3].id] and token
    page, token = jobs.list_jobs("acme", states=[JobState.CANCELLED], page_size=2,
                                 page_token=token)
    assert ([j.id for j in page], token) == ([created[1].id], "")
    page, token = jobs.list_jobs("acme", states=[JobState.QUEUED, JobState.RUNNING],
                                 page_size=5)
    assert ([j.id for j in page], token) == ([created[2].id, created[0].id], "")
    assert all(j.counts == counts(cancelled=1) for j in
               jobs.list_jobs("acme", states=[JobState.CANCELLED], page_size=5)[0])


@pytest.mark.parametrize("token", [
    "garbage!", base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(json.dumps({"a": 1, "b": 2}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps(["2027-03-01T12:00:00", "job_x"]).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps(["yesterday", "job_x"]).encode()).decode()])
def test_an_invalid_page_token_is_refused(jobs: JobStore, token: str) -> None:
    with pytest.raises(InvalidPageToken):
        jobs.list_jobs("acme", page_size=2, page_token=token)


# Leases.

def test_leases_take_oldest_job_first_within_a_window_per_job(jobs: JobStore,
                                                              clock: Clock) -> None:
    older = create(jobs, 5)
    clock.advance(seconds=1)
    newer = create(jobs, 3)
    clock.advance(seconds=1)

    leased = lease(jobs, limit=10, window=2)
    assert keys(leased) == [(older.id, 0), (older.id, 1), (newer.id, 0), (newer.id, 1)]
    assert {(i.state, i.attempts, i.lease_owner) for i in leased} == {("running", 1, "gw-a")}
    assert leased[0].request == b"request 0"
    assert lease(jobs, "gw-b", limit=10, window=2) == []
    started = jobs.get_job("acme", older.id)
    assert (started.state, started.started_at) == (JobState.RUNNING, T0 + timedelta(seconds=2))
    assert started.counts == counts(queued=3, running=2)

    assert succeed(jobs, leased[0])
    assert keys(lease(jobs, "gw-b", limit=10, window=2)) == [(older.id, 2)]
    assert keys(lease(jobs, limit=1, window=3)) == [(older.id, 3)]
    assert keys(lease(jobs, limit=10, window=3)) == [(newer.id, 2)]


def test_an_expired_lease_is_redelivered_and_the_stale_attempt_refused(
        jobs: JobStore, clock: Clock) -> None:
    job = create(jobs, 2)
    first = lease(jobs, "gw-a")
    clock.advance(seconds=31)  # gw-a died

    second = lease(jobs, "gw-b")
    assert keys(second) == keys(first)
    assert {(i.attempts, i.lease_owner) for i in second} == {(2, "gw-b")}
    assert not succeed(jobs, first[0], b"late")
    assert succeed(jobs, second[0], b"from gw-b")
    assert not succeed(jobs, second[0], b"twice")
    assert jobs.finish_item(job.id, 1, attempt=2, state=ItemState.FAILED, error_code=13,
                            error_message="engine crashed")
    assert [(r.index, r.state, r.result, r.error_code, r.error_message, r.attempts)
            for r in jobs.results("acme", job.id)] == [
        (0, "succeeded", b"from gw-b", None, "", 2),
        (1, "failed", None, 13, "engine crashed", 2)]
    assert jobs.get_job("acme", job.id).state == JobState.SUCCEEDED


def test_renewed_leases_are_not_redelivered(jobs: JobStore, clock: Clock) -> None:
    create(jobs, 3)
    held = lease(jobs, "gw-a")
    clock.advance(seconds=20)
    assert jobs.renew_leases("gw-b", keys(held), LEASE) == 0  # not its leases
    assert jobs.renew_leases("gw-a", keys(held[:2]) + [("job_unknown", 0)], LEASE) == 2
    clock.advance(seconds=20)

    redelivered = lease(jobs, "gw-b")
    assert keys(redelivered) == keys(held[2:])
    assert jobs.renew_leases("gw-a", keys(held), LEASE) == 2  # the third one is gw-b's now
    clock.advance(seconds=25)
    assert jobs.renew_leases("gw-a", keys(held), LEASE) == 2
    clock.advance(seconds=31)
    assert jobs.renew_leases("gw-a", keys(held), LEASE) == 0  # expired: lost


def test_released_leases_are_leased_again_at_once_as_the_next_attempt(
        jobs: JobStore, clock: Clock) -> None:
    create(jobs, 3)
    held = lease(jobs, "gw-a")
    assert jobs.release_leases("gw-b", keys(held)) == 0  # not its leases
    assert jobs.release_leases("gw-a", keys(held[:2]) + [("job_unknown", 0)]) == 2
    again = lease(jobs, "gw-b")
    assert keys(again) == keys(held[:2])
    assert {(i.attempts, i.lease_owner) for i in again} == {(2, "gw-b")}
    assert not succeed(jobs, held[0], b"from the stopped gateway")
    assert jobs.renew_leases("gw-a", keys(held), LEASE) == 1  # the one it kept


def tenants(items: list[ItemRecord]) -> list[str]:
    return [item.tenant for item in items]


def test_a_tenant_with_older_jobs_does_not_take_every_lease(jobs: JobStore,
                                                            clock: Clock) -> None:
    for _ in range(3):
        create(jobs, 20, tenant="acme")
        clock.advance(seconds=1)
    globex = create(jobs, 20, tenant="globex")

    leased = lease(jobs, limit=4, window=10)
    assert sorted(tenants(leased)) == ["acme", "acme", "globex", "globex"]
    assert [i.index for i in leased if i.job_id == globex.id] == [0, 1]


def test_repeated_leases_alternate_between_tenants(jobs: JobStore, clock: Clock) -> None:
    oldest = create(jobs, 20, tenant="acme")
    for _ in range(2):
        clock.advance(seconds=1)
        create(jobs, 20, tenant="acme")
    clock.advance(seconds=1)
    create(jobs, 20, tenant="globex")

    leased = [lease(jobs, limit=1, window=10) for _ in range(6)]
    assert [tenants(items) for items in leased] == [["acme"], ["globex"]] * 3
    assert [(i.job_id, i.index) for [i] in leased if i.tenant == "acme"] == [
        (oldest.id, 0), (oldest.id, 1), (oldest.id, 2)]


def test_the_tenant_with_fewest_items_in_flight_goes_first(jobs: JobStore,
                                                           clock: Clock) -> None:
    acme = create(jobs, 20, tenant="acme")
    clock.advance(seconds=1)
    globex = create(jobs, 20, tenant="globex")
    assert tenants(lease(jobs, limit=3, window=10)) == ["acme", "acme", "globex"]

    clock.advance(seconds=1)
    initech = create(jobs, 20, tenant="initech")
    assert keys(lease(jobs, limit=4, window=10)) == [(initech.id, 0), (initech.id, 1),
                                                     (globex.id, 1), (acme.id, 2)]


def test_one_tenant_alone_gets_every_lease(jobs: JobStore, clock: Clock) -> None:
    first = create(jobs, 20)
    clock.advance(seconds=1)
    second = create(jobs, 20)

    assert keys(lease(jobs, limit=10, window=5)) == [(first.id, i) for i in range(5)] + [
        (second.id, i) for i in range(5)]


def test_a_tenant_with_few_items_leaves_its_share_to_the_others(jobs: JobStore,
                                                                clock: Clock) -> None:
    small = create(jobs, 2, tenant="globex")
    clock.advance(seconds=1)
    large = create(jobs, 20, tenant="acme")

    leased = lease(jobs, limit=10, window=10)
    assert keys(leased) == [(small.id, 0), (small.id, 1)] + [(large.id, i) for i in range(8)]
    assert keys(lease(jobs, limit=10, window=10)) == [(large.id, 8), (large.id, 9)]


def test_two_replicas_leasing_at_once_never_share_an_item(
        jobs: JobStore, engine: Engine, second_engine: Engine, clock: Clock) -> None:
    created = [create(jobs, 120) for _ in range(3)]
    stores = [jobs, JobStore(second_engine, clock=clock)]

    def lease_until_empty(store: JobStore, owner: str) -> list[ItemRecord]:
        taken: list[ItemRecord] = []
        while any(store.get_job("acme", j.id).counts[ItemState.QUEUED] for j in created):
            taken += store.lease_items(owner, limit=7, lease=LEASE, window_per_job=1000)
            time.sleep(0.005)  # as a runner polls: SQLite's busy wait would starve the other
        return taken

    taken = run_together([lambda s=s, o=o: lease_until_empty(s, o)
                          for s, o in zip(stores, ("gw-a", "gw-b"))])
    everything = taken[0] + taken[1]
    assert len(everything) == 360 and all(taken)
    assert len({(i.job_id, i.index, i.attempts) for i in everything}) == 360
    assert {(i.job_id, i.index) for i in everything} == {(j.id, n) for j in created
                                                         for n in range(120)}
    assert {i.attempts for i in everything} == {1}
    assert rows(engine, "SELECT lease_owner, count(*) FROM job_items GROUP BY lease_owner "
                        "ORDER BY lease_owner") == [("gw-a", len(taken[0])),
                                                    ("gw-b", len(taken[1]))]


def test_two_replicas_leasing_at_once_keep_the_window(
        jobs: JobStore, second_engine: Engine, clock: Clock) -> None:
    stores = [jobs, JobStore(second_engine, clock=clock)]
    for _ in range(10):  # each round, both lease from one new job at the same moment
        job = create(jobs, 30)
        leased = run_together([
            lambda s=s, o=o: s.lease_items(o, limit=10, lease=LEASE, window_per_job=10)
            for s, o in zip(stores, ("gw-a", "gw-b"))])
        assert sum(map(len, leased)) == 10
        assert jobs.get_job("acme", job.id).counts == counts(queued=20, running=10)


def test_the_last_two_items_finished_at_once_end_the_job_once(
        jobs: JobStore, engine: Engine, second_engine: Engine, clock: Clock) -> None:
    stores = [jobs, JobStore(second_engine, clock=clock)]
    for _ in range(8):
        job = create(jobs, 2, webhook_url="https://acme.example/hook")
        pair = lease(jobs, window=2)
        run_together([lambda s=s, i=i: succeed(s, i) for s, i in zip(stores, pair)])
        ended = jobs.get_job("acme", job.id)
        assert (ended.state, ended.counts) == (JobState.SUCCEEDED, counts(succeeded=2))
    assert len(outbox(engine)) == 8


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    start = threading.Barrier(len(calls))

    def after_barrier(call: Callable[[], Any]) -> Any:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(after_barrier, calls))


# Results and the end of a job.

def test_the_last_result_ends_the_job_with_its_webhook_event(jobs: JobStore, engine: Engine,
                                                             clock: Clock) -> None:
    job = create(jobs, 2, webhook_url="https://acme.example/hook")
    first, second = lease(jobs)
    clock.advance(seconds=5)
    assert jobs.finish_item(job.id, first.index, attempt=first.attempts,
                            state=ItemState.FAILED, error_code=8, error_message="over quota")
    assert jobs.get_job("acme", job.id).state == JobState.RUNNING and outbox(engine) == []

    assert succeed(jobs, second, b"review")
    ended = jobs.get_job("acme", job.id)
    assert (ended.state, ended.finished_at) == (JobState.SUCCEEDED, T0 + timedelta(seconds=5))
    assert ended.counts == counts(succeeded=1, failed=1)
    [event] = jobs.due_webhooks(10)
    assert (event.webhook_id, event.job_id, event.tenant, event.url, event.event_type,
            event.attempts) == (webhook_id(job.id, "job.succeeded"), job.id, "acme",
                                "https://acme.example/hook", "job.succeeded", 0)
    assert json.loads(event.payload) == {
        "type": "job.succeeded", "timestamp": "2027-03-01T12:00:05Z",
        "data": {"job_id": job.id, "state": "succeeded", "total_items": 2,
                 "counts": {"queued": 0, "running": 0, "succeeded": 1, "failed": 1,
                            "cancelled": 0, "expired": 0}}}


def test_the_job_end_and_its_event_are_one_transaction(jobs: JobStore, engine: Engine,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    job = create(jobs, 1, webhook_url="https://acme.example/hook")
    [item] = lease(jobs)

    def outbox_down(*_args: Any) -> None:
        raise RuntimeError("outbox insert failed")

    monkeypatch.setattr(jobs_module, "_add_webhook_event", outbox_down)
    with pytest.raises(RuntimeError):
        succeed(jobs, item)
    assert jobs.get_job("acme", job.id).counts == counts(running=1)
    assert jobs.get_job("acme", job.id).state == JobState.RUNNING

    monkeypatch.undo()
    assert succeed(jobs, item)
    assert jobs.get_job("acme", job.id).state == JobState.SUCCEEDED
    assert outbox(engine) == [(job.id, "job.succeeded", "pending")]


def test_a_job_without_success_fails_and_without_webhook_has_no_event(
        jobs: JobStore, engine: Engine) -> None:
    job = create(jobs, 2)
    for item in lease(jobs):
        assert jobs.finish_item(item.job_id, item.index, attempt=1, state=ItemState.FAILED,
                                error_code=3, error_message="bad request")
    ended = jobs.get_job("acme", job.id)
    assert (ended.state, ended.counts) == (JobState.FAILED, counts(failed=2))
    assert outbox(engine) == []
    with pytest.raises(ValueError, match="result state"):
        jobs.finish_item(job.id, 0, attempt=1, state=ItemState.EXPIRED)


def test_results_page_by_index(jobs: JobStore) -> None:
    job = create(jobs, 6)
    leased = lease(jobs)
    for item in leased[:5]:
        if item.index != 2:
            succeed(jobs, item, f"result {item.index}".encode())
    assert [r.index for r in jobs.results("acme", job.id, limit=2)] == [0, 1]
    page = jobs.results("acme", job.id, after_index=1, limit=2)
    assert [(r.index, r.result) for r in page] == [(3, b"result 3"), (4, b"result 4")]
    assert jobs.results("acme", job.id, after_index=4) == []


# Cancellation, expiry, purge.

def test_cancel_cancels_queued_items_and_waits_for_running_ones(
        jobs: JobStore, engine: Engine, clock: Clock) -> None:
    job = create(jobs, 4, webhook_url="https://acme.example/hook")
    running = lease(jobs, window=2)

    cancelling = jobs.cancel_job("acme", job.id)
    assert (cancelling.state, cancelling.counts) == (JobState.CANCELLING,
                                                     counts(running=2, cancelled=2))
    assert lease(jobs) == [] and outbox(engine) == []
    assert jobs.cancel_job("acme", job.id).state == JobState.CANCELLING
    assert succeed(jobs, running[0])
    assert jobs.get_job("acme", job.id).state == JobState.CANCELLING
    clock.advance(seconds=1)
    assert jobs.finish_item(job.id, running[1].index, attempt=1, state=ItemState.CANCELLED)

    cancelled = jobs.get_job("acme", job.id)
    assert (cancelled.state, cancelled.counts, cancelled.finished_at) == (
        JobState.CANCELLED, counts(succeeded=1, cancelled=3), T0 + timedelta(seconds=1))
    assert outbox(engine) == [(job.id, "job.cancelled", "pending")]
    clock.advance(seconds=1)
    assert jobs.cancel_job("acme", job.id) == cancelled  # terminal: unchanged


def test_cancel_of_a_queued_job_ends_it_at_once(jobs: JobStore, clock: Clock) -> None:
    job = create(jobs, 3)
    cancelled = jobs.cancel_job("acme", job.id)
    assert (cancelled.state, cancelled.counts, cancelled.finished_at) == (
        JobState.CANCELLED, counts(cancelled=3), T0)
    assert cancelled.started_at is None and lease(jobs) == []


def test_cancel_does_not_wait_for_items_whose_gateway_died(jobs: JobStore,
                                                           clock: Clock) -> None:
    job = create(jobs, 3)
    lease(jobs, window=1)
    clock.advance(seconds=31)
    assert jobs.cancel_job("acme", job.id).counts == counts(cancelled=3)

    other = create(jobs, 3)
    [running] = lease(jobs, window=1)
    assert jobs.cancel_job("acme", other.id).state == JobState.CANCELLING
    assert jobs.expire_due() == []
    clock.advance(seconds=31)  # its gateway died too
    [ended] = jobs.expire_due()
    assert (ended.id, ended.state, ended.counts) == (other.id, JobState.CANCELLED,
                                                     counts(cancelled=3))
    assert not succeed(jobs, running)


def test_expiry_keeps_the_results_recorded(jobs: JobStore, engine: Engine,
                                           clock: Clock) -> None:
    job = create(jobs, 3, window=timedelta(hours=1), webhook_url="https://acme.example/hook")
    clock.advance(seconds=1)
    on_time = create(jobs, 1, window=timedelta(hours=2))
    first, second = lease(jobs, limit=2)
    assert succeed(jobs, first, b"in time")
    clock.advance(hours=1)
    assert [i.job_id for i in lease(jobs)] == [on_time.id]  # past its window: not leased

    [expired] = jobs.expire_due()
    assert (expired.id, expired.state, expired.finished_at) == (
        job.id, JobState.EXPIRED, T0 + timedelta(hours=1, seconds=1))
    assert expired.counts == counts(succeeded=1, expired=2)
    assert [(r.index, r.state, r.result) for r in jobs.results("acme", job.id)] == [
        (0, "succeeded", b"in time"), (1, "expired", None), (2, "expired", None)]
    assert not succeed(jobs, second)
    assert outbox(engine) == [(job.id, "job.expired", "pending")]
    assert jobs.expire_due() == []
    assert jobs.get_job("acme", on_time.id).state == JobState.RUNNING


def test_purge_deletes_jobs_ended_before_the_retention(jobs: JobStore, engine: Engine,
                                                       clock: Clock) -> None:
    old = create(jobs, 2, webhook_url="https://acme.example/hook")
    jobs.cancel_job("acme", old.id)
    clock.advance(days=3)
    recent = create(jobs, 1)
    jobs.cancel_job("acme", recent.id)
    still_running = create(jobs, 1)
    lease(jobs)
    clock.advance(days=5)

    assert jobs.purge(timedelta(days=7)) == 1
    assert jobs.get_job("acme", old.id) is None
    assert rows(engine, "SELECT count(*) FROM job_items WHERE job_id = :id", id=old.id) == [(0,)]
    assert outbox(engine) == []
    assert {j.id for j in jobs.list_jobs("acme", page_size=10)[0]} == {recent.id,
                                                                       still_running.id}
    clock.advance(days=30)
    assert jobs.purge(timedelta(days=7)) == 1
    assert jobs.get_job("acme", still_running.id) is not None


# Webhooks.

def test_webhook_events_are_claimed_retried_and_delivered(jobs: JobStore, clock: Clock) -> None:
    job = create(jobs, 1, webhook_url="https://acme.example/hook")
    jobs.cancel_job("acme", job.id)
    [event] = jobs.due_webhooks(10)
    assert jobs.due_webhooks(10) == []  # claimed by the first caller
    assert jobs.record_webhook_attempt(event.webhook_id, delivered=False, status=503,
                                       error="unavailable",
                                       next_attempt_at=clock() + timedelta(seconds=10))
    clock.advance(seconds=9)
    assert jobs.due_webhooks(10) == []
    clock.advance(seconds=1)
    [again] = jobs.due_webhooks(10)
    assert (again.webhook_id, again.attempts) == (event.webhook_id, 1)
    assert jobs.record_webhook_attempt(event.webhook_id, delivered=True, status=200, error="",
                                       next_attempt_at=None)
    clock.advance(minutes=5)
    assert jobs.due_webhooks(10) == []
    assert not jobs.record_webhook_attempt(event.webhook_id, delivered=True, status=200,
                                           error="", next_attempt_at=None)


def test_a_webhook_given_up_is_not_due_again(jobs: JobStore, engine: Engine,
                                             clock: Clock) -> None:
    job = create(jobs, 1, webhook_url="https://acme.example/hook")
    jobs.cancel_job("acme", job.id)
    [event] = jobs.due_webhooks(10)
    with pytest.raises(ValueError, match="next_attempt_at"):
        jobs.record_webhook_attempt(event.webhook_id, delivered=False, status=None,
                                    error="timeout", next_attempt_at=None)
    assert jobs.record_webhook_attempt(event.webhook_id, delivered=False, status=None,
                                       error="timeout", next_attempt_at=None, gave_up=True)
    clock.advance(hours=1)
    assert jobs.due_webhooks(10) == []
    assert rows(engine, "SELECT state, attempts, last_status, last_error FROM "
                        "job_webhook_events") == [("gave_up", 1, None, "timeout")]


def test_a_tenant_webhook_secret_is_created_once(jobs: JobStore, second_engine: Engine,
                                                 clock: Clock) -> None:
    other = JobStore(second_engine, clock=clock)
    first, second = run_together([lambda: jobs.webhook_secret("acme"),
                                  lambda: other.webhook_secret("acme")])
    assert first == second and first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert jobs.webhook_secret("acme") == first
    assert jobs.webhook_secret("globex") not in (first, "")


# What a gateway running the items reads besides them.

def test_leased_items_carry_their_jobs_tenant_expiry_and_trace(jobs: JobStore) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job = create(jobs, 2, tenant="bots", trace_parent=parent)
    leased = lease(jobs)
    assert {(i.tenant, i.expires_at, i.trace_parent) for i in leased} == {
        ("bots", job.expires_at, parent)}


def test_job_states_and_a_tenants_unfinished_items(jobs: JobStore, clock: Clock) -> None:
    first = create(jobs, 3)
    clock.advance(seconds=1)
    second = create(jobs, 2)
    create(jobs, 4, tenant="other")
    assert jobs.unfinished_items("acme") == 5
    assert succeed(jobs, lease(jobs, limit=1)[0])  # first job's item 0
    assert jobs.unfinished_items("acme") == 4
    jobs.cancel_job("acme", second.id)
    assert jobs.unfinished_items("acme") == 2
    assert jobs.job_states([first.id, second.id, "job_missing"]) == {
        first.id: JobState.RUNNING, second.id: JobState.CANCELLED}


def test_the_tenant_of_a_fleet_without_keys_has_its_jobs_too(jobs: JobStore) -> None:
    anonymous = create(jobs, 2, tenant="")
    assert jobs.get_job("", anonymous.id) == anonymous
    assert jobs.get_job("acme", anonymous.id) is None
    assert [i.tenant for i in lease(jobs)] == ["", ""]


def test_two_replicas_submitting_at_once_cannot_pass_the_unfinished_limit(
        jobs: JobStore, second_engine: Engine, clock: Clock) -> None:
    stores = [jobs, JobStore(second_engine, clock=clock)]

    def submit(store: JobStore) -> str:
        try:
            store.create_job("acme", new_items(600), priority=1,
                             completion_window=timedelta(hours=1), max_unfinished=1000)
            return "stored"
        except TooManyUnfinished as refused:
            assert (refused.unfinished, refused.adding, refused.limit) == (600, 600, 1000)
            return "refused"

    outcomes = run_together([lambda s=s: submit(s) for s in stores])
    assert sorted(outcomes) == ["refused", "stored"]
    assert jobs.unfinished_items("acme") == 600
    assert create(jobs, 400, max_unfinished=1000).total_items == 400  # exactly the limit
