"""Usage from the gateways' stream into the database (SQLite and PostgreSQL), over a real Redis:
each batch counts once however often it is delivered; entries a consumer took and never
acknowledged (it died before or after committing) are claimed by another and count once; the
stream is emptied as it is stored; reads filter by tenant and day."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import Engine, inspect

from fleet_common.keys import USAGE_STREAM
from fleet_common.usage_events import UsageBatch, UsageCounts, UsageKey, batch_fields
from model_registry.database import migrate
from model_registry.usage import UsageRow, UsageStore
from model_registry.usage_consumer import GROUP, UsageConsumer

pytestmark = pytest.mark.timeout(120)

DAY = date(2026, 12, 29)
CLAIM_IDLE_S = 0.3


def batch(batch_id: str, *items: tuple[UsageKey, UsageCounts]) -> UsageBatch:
    return UsageBatch(batch_id, dict(items))


def key(tenant: str = "acme", version: str = "v1", day: date = DAY) -> UsageKey:
    return UsageKey(tenant, "m", version, day)


@pytest.fixture
def usage(engine: Engine) -> UsageStore:
    migrate(engine)
    return UsageStore(engine)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def consumers(redis_url: str, usage: UsageStore) -> AsyncIterator[list[UsageConsumer]]:
    made = [UsageConsumer(redis_url, usage, claim_idle_s=CLAIM_IDLE_S, block_ms=100,
                          name=name) for name in ("registry-a", "registry-b")]
    yield made
    for consumer in made:
        await consumer.aclose()


async def add(redis: Redis, *batches: UsageBatch) -> None:
    for b in batches:
        await redis.xadd(USAGE_STREAM, batch_fields(b))  # type: ignore[arg-type]


def requests_of(usage: UsageStore, tenant: str = "acme") -> int:
    return sum(row.requests for row in usage.usage(tenant, DAY, DAY))


async def test_batches_are_summed_per_tenant_version_and_day(
        usage: UsageStore, redis: Redis, consumers: list[UsageConsumer]) -> None:
    await add(redis,
              batch("gw1:1", (key(), UsageCounts(2, 20, 8, {"queue_full": 1})),
                    (key(version="v2"), UsageCounts(1, 5, 5))),
              batch("gw2:1", (key(), UsageCounts(1, 10, 2, {"queue_full": 2, "Unavailable": 1})),
                    (key("globex"), UsageCounts(4, 4, 4))),
              batch("gw1:2", (key(day=DAY + timedelta(days=1)),
                              UsageCounts(refusals={"requests_per_minute": 3}))))
    consumer = consumers[0]
    assert await consumer.process(await consumer.read_new()) == 3
    assert usage.usage("acme", DAY, DAY + timedelta(days=1)) == [
        UsageRow(DAY, "acme", "m", "v1", 3, 30, 10, {"Unavailable": 1, "queue_full": 3}),
        UsageRow(DAY, "acme", "m", "v2", 1, 5, 5),
        UsageRow(DAY + timedelta(days=1), "acme", "m", "v1", 0, 0, 0,
                 {"requests_per_minute": 3}),
    ]
    assert usage.usage("acme", DAY + timedelta(days=1), DAY + timedelta(days=1))[0].refusals \
        == {"requests_per_minute": 3}
    assert [(r.tenant, r.requests) for r in usage.usage(None, DAY, DAY)] == [
        ("acme", 3), ("acme", 1), ("globex", 4)]
    assert usage.usage("initech", DAY, DAY) == []
    assert await redis.xlen(USAGE_STREAM) == 0  # stored entries are deleted
    assert (await redis.xpending(USAGE_STREAM, GROUP))["pending"] == 0


async def test_a_batch_delivered_twice_counts_once(
        usage: UsageStore, redis: Redis, consumers: list[UsageConsumer]) -> None:
    first = batch("gw1:1", (key(), UsageCounts(1, 10, 10)))
    await add(redis, first, first)  # a gateway's XADD retried after an unsure failure
    consumer = consumers[0]
    entries = await consumer.read_new()
    assert len(entries) == 2
    assert await consumer.process(entries) == 1
    assert await consumer.process(entries) == 0  # the same entries delivered again
    await add(redis, first)
    assert await consumer.process(await consumer.read_new()) == 0
    assert requests_of(usage) == 1


async def test_entries_of_a_consumer_killed_before_it_committed_are_claimed_and_count_once(
        usage: UsageStore, redis: Redis, consumers: list[UsageConsumer]) -> None:
    dead, alive = consumers
    await add(redis, batch("gw1:1", (key(), UsageCounts(2, 2, 2))))
    assert len(await dead.read_new()) == 1  # taken, then the process died
    assert await alive.read_new() == []  # the group gave it to the dead one
    assert await alive.claim_stale() == []  # not idle long enough yet
    await asyncio.sleep(CLAIM_IDLE_S + 0.1)
    claimed = await alive.claim_stale()
    assert len(claimed) == 1
    assert await alive.process(claimed) == 1
    assert requests_of(usage) == 2
    assert (await redis.xpending(USAGE_STREAM, GROUP))["pending"] == 0


async def test_entries_of_a_consumer_killed_after_it_committed_are_claimed_and_not_recounted(
        usage: UsageStore, redis: Redis, consumers: list[UsageConsumer]) -> None:
    dead, alive = consumers
    await add(redis, batch("gw1:1", (key(), UsageCounts(2, 2, 2))),
              batch("gw1:2", (key(), UsageCounts(1, 1, 1))))
    entries = await dead.read_new()
    usage.apply([UsageBatch("gw1:1", {key(): UsageCounts(2, 2, 2)})])  # committed one, died
    await asyncio.sleep(CLAIM_IDLE_S + 0.1)
    claimed = await alive.claim_stale()
    assert [entry_id for entry_id, _ in claimed] == [entry_id for entry_id, _ in entries]
    assert await alive.process(claimed) == 1  # gw1:2 only
    assert requests_of(usage) == 3
    assert await redis.xlen(USAGE_STREAM) == 0


async def test_the_running_consumer_stores_what_gateways_add_and_skips_a_bad_entry(
        usage: UsageStore, redis: Redis, consumers: list[UsageConsumer]) -> None:
    consumer = consumers[0]
    consumer.start()
    await redis.xadd(USAGE_STREAM, {"format": "1", "batch": "bad", "counts": "[{"})
    await add(redis, batch("gw1:1", (key(), UsageCounts(5, 1, 1))))
    async with asyncio.timeout(10):
        while requests_of(usage) != 5 or await redis.xlen(USAGE_STREAM):
            await asyncio.sleep(0.05)


async def test_old_batch_ids_are_forgotten(engine: Engine) -> None:
    migrate(engine)
    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    usage = UsageStore(engine, clock=lambda: now[0])
    usage.apply([batch("gw1:1", (key(), UsageCounts(1, 1, 1)))])
    now[0] += timedelta(days=6)
    usage.apply([batch("gw1:2", (key(), UsageCounts(1, 1, 1)))])
    assert usage.forget_batches() == 0
    now[0] += timedelta(days=2)
    assert usage.forget_batches() == 1
    assert usage.apply([batch("gw1:2", (key(), UsageCounts(1, 1, 1)))]) == 0


def test_migration_0005_adds_and_removes_the_usage_tables(engine: Engine) -> None:
    migrate(engine, "0004")
    assert "usage_daily" not in inspect(engine).get_table_names()
    migrate(engine)
    assert {"usage_daily", "usage_refusals", "usage_batches"} <= set(
        inspect(engine).get_table_names())
    UsageStore(engine).apply([batch("gw1:1", (key(), UsageCounts(1, 2, 3)))])
    migrate(engine)  # idempotent
    assert UsageStore(engine).usage("acme", DAY, DAY)[0].completion_tokens == 3
