"""The gateway's usage recorder against a real Redis: it batches a flush's counts into one stream
entry per flush, counts a request shared by several callers (on one gateway or several) once,
keeps its counts through a Redis outage and writes them, once, when Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_cli.processes import free_port
from fleet_common.keys import USAGE_STREAM, request_scope, usage_counted
from fleet_common.usage_events import UsageBatch, UsageCounts, UsageKey, batch_from_fields
from fleet_common.wire import Final, GenerationTask
from gateway.usage_recorder import UsageRecorder
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

NOON = 1_798_545_600.0  # 2026-12-29 12:00:00 UTC
DAY = date(2026, 12, 29)
RETENTION_S = 600


def task(tenant: str, request_id: str, model: str = "m", version: str = "v1",
         deadline_unix: float | None = None) -> GenerationTask:
    return GenerationTask(tenant=tenant, request_id=request_id, model=model,
                          model_version=version,
                          deadline_unix=deadline_unix or time.time() + 60)


def final(prompt: int, completion: int, version: str = "v1") -> Final:
    return Final(prompt_tokens=prompt, completion_tokens=completion, model_version=version)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    await client.flushdb()
    yield client
    await client.aclose()


async def batches(redis: Redis) -> list[UsageBatch]:
    return [batch_from_fields(fields) for _, fields in await redis.xrange(USAGE_STREAM)]


def recorder(redis: Redis, clock: list[float] | None = None, **kwargs: object) -> UsageRecorder:
    now = clock or [NOON]
    return UsageRecorder(redis, result_retention_s=RETENTION_S, clock=lambda: now[0],
                         **kwargs)  # type: ignore[arg-type]


async def test_one_flush_is_one_entry_with_the_counts_added_up_per_key(redis: Redis) -> None:
    usage = recorder(redis, instance="gw1")
    for i in range(5):
        usage.completed(task("acme", f"r{i}"), final(10, 3))
    usage.completed(task("acme", "x1", version="v2"), final(7, 1, version="v2"))
    usage.completed(task("globex", "r0"), final(4, 4))  # a request id is per tenant
    usage.refused(task("acme", "q1"), "queue_full")
    usage.refused(task("acme", "q2"), "queue_full")
    usage.refused(task("acme", "q3", version="v2"), "requests_per_minute")
    assert await redis.xlen(USAGE_STREAM) == 0  # nothing leaves memory before a flush

    await usage.flush()
    [batch] = await batches(redis)
    assert batch.batch_id == "gw1:1"
    assert batch.counts == {
        UsageKey("acme", "m", "v1", DAY): UsageCounts(5, 50, 15, {"queue_full": 2}),
        UsageKey("acme", "m", "v2", DAY): UsageCounts(1, 7, 1, {"requests_per_minute": 1}),
        UsageKey("globex", "m", "v1", DAY): UsageCounts(1, 4, 4),
    }
    await usage.flush()  # nothing new: no empty entry
    assert await redis.xlen(USAGE_STREAM) == 1


async def test_callers_sharing_a_request_id_count_it_once_on_any_gateway(redis: Redis) -> None:
    one, other = recorder(redis, instance="gw1"), recorder(redis, instance="gw2")
    shared = task("acme", "shared")
    one.completed(shared, final(10, 5))
    one.completed(shared, final(10, 5))  # a second caller attached on the same gateway
    other.completed(shared, final(10, 5))  # and one on another gateway
    other.completed(task("acme", "own"), final(1, 1))
    await one.flush()
    await other.flush()
    counted = {b.batch_id: b.counts[UsageKey("acme", "m", "v1", DAY)].requests
               for b in await batches(redis)}
    assert counted == {"gw1:1": 1, "gw2:1": 1}  # gw2's one is "own"

    one.completed(shared, final(10, 5))  # a retry under the id later gets the same result
    await one.flush()
    assert len(await batches(redis)) == 2


async def test_the_marker_expires_with_the_request_ids_claim(redis: Redis) -> None:
    usage = UsageRecorder(redis, result_retention_s=RETENTION_S)
    deadline = time.time() + 30
    usage.completed(task("acme", "r1", deadline_unix=deadline), final(1, 1))
    await usage.flush()
    expires_at = await redis.expiretime(usage_counted(request_scope("acme", "r1")))
    assert expires_at == int(deadline + RETENTION_S)  # what the claim's EXPIRE gives


async def test_counts_go_to_the_utc_day_they_happened_on(redis: Redis) -> None:
    clock = [NOON + 12 * 3600 - 0.5]  # 23:59:59.5
    usage = recorder(redis, clock)
    usage.completed(task("acme", "late"), final(1, 1))
    clock[0] += 1.0
    usage.completed(task("acme", "early"), final(2, 2))
    usage.refused(task("acme", "q"), "Unavailable")
    await usage.flush()
    [batch] = await batches(redis)
    assert batch.counts == {
        UsageKey("acme", "m", "v1", DAY): UsageCounts(1, 1, 1),
        UsageKey("acme", "m", "v1", date(2026, 12, 30)): UsageCounts(1, 2, 2,
                                                                      {"Unavailable": 1}),
    }


async def test_the_loop_flushes_every_interval_and_close_flushes_the_rest(redis: Redis) -> None:
    usage = recorder(redis, flush_interval_s=0.2)
    usage.start()
    usage.completed(task("acme", "r1"), final(3, 2))
    started = time.monotonic()
    while await redis.xlen(USAGE_STREAM) == 0:
        assert time.monotonic() - started < 2.0, "no flush within 2 s"
        await asyncio.sleep(0.02)
    usage.refused(task("acme", "q"), "queue_full")
    await usage.aclose()  # before the next interval
    assert [b.counts for b in await batches(redis)] == [
        {UsageKey("acme", "m", "v1", DAY): UsageCounts(1, 3, 2)},
        {UsageKey("acme", "m", "v1", DAY): UsageCounts(refusals={"queue_full": 1})},
    ]


async def test_counts_wait_out_a_redis_outage_and_are_written_once(
        tmp_path: Path) -> None:
    server = RedisServer(port=free_port(), log_dir=tmp_path)
    server.start()
    client = Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)
    try:
        usage = recorder(client, instance="gw1")
        usage.completed(task("acme", "before"), final(5, 5))
        await usage.flush()
        server.kill()
        usage.completed(task("acme", "during"), final(1, 2))
        usage.refused(task("acme", "q"), "Unavailable")
        for _ in range(2):
            with pytest.raises(RedisError):
                await usage.flush()
        server.start()  # empty: a Redis without its data (no AOF)
        usage.completed(task("acme", "after"), final(1, 1))
        await usage.flush()
        written = await batches(client)
        assert [b.batch_id for b in written] == ["gw1:2"]
        assert written[0].counts == {UsageKey("acme", "m", "v1", DAY): UsageCounts(
            2, 2, 3, {"Unavailable": 1})}
    finally:
        await client.aclose()
        server.kill()


async def test_a_batch_whose_write_failed_is_written_again_under_its_id(redis: Redis) -> None:
    usage = recorder(redis, instance="gw1")
    usage.completed(task("acme", "r1"), final(5, 5))
    await redis.set(USAGE_STREAM, "not a stream")  # XADD fails (WRONGTYPE), dedup works
    with pytest.raises(RedisError):
        await usage.flush()
    await redis.delete(USAGE_STREAM)
    usage.completed(task("acme", "r2"), final(1, 1))
    await usage.flush()
    assert [(b.batch_id, b.counts[UsageKey("acme", "m", "v1", DAY)].requests)
            for b in await batches(redis)] == [("gw1:1", 1), ("gw1:2", 1)]
