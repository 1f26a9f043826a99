"""The worker's heartbeat against a real Redis: liveness, the status hash, and a status that
cannot be read."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from fleet_common.keys import live_workers, worker_status
from workers.background import heartbeat, leave

pytestmark = pytest.mark.timeout(60)


async def _beat_once(redis: Redis, status) -> None:  # type: ignore[no-untyped-def]
    task = asyncio.create_task(heartbeat(redis, "fleet.7b.m.v1", "w1", 0.05, status=status))
    await asyncio.sleep(0.2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_heartbeat_writes_liveness_and_status_and_leave_removes_both(
        redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    started = time.time()
    await _beat_once(redis, lambda: {"engine_requests": 3, "tasks_in_flight": 2})
    assert await redis.zscore(live_workers("fleet.7b.m.v1"), "w1") >= started
    status = await redis.hgetall(worker_status("w1"))
    assert (status[b"engine_requests"], status[b"tasks_in_flight"]) == (b"3", b"2")
    assert status[b"queue"] == b"fleet.7b.m.v1" and float(status[b"updated_at"]) >= started
    assert 0 < await redis.ttl(worker_status("w1")) <= 1  # five beats, at least a second
    await leave(redis, "fleet.7b.m.v1", "w1")
    assert await redis.zscore(live_workers("fleet.7b.m.v1"), "w1") is None
    assert not await redis.exists(worker_status("w1"))
    await redis.aclose()


async def test_a_status_that_fails_does_not_stop_liveness(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)

    def broken() -> dict[str, int]:
        raise RuntimeError("engine not readable")

    started = time.time()
    await _beat_once(redis, broken)
    assert await redis.zscore(live_workers("fleet.7b.m.v1"), "w1") >= started
    assert float((await redis.hgetall(worker_status("w1")))[b"updated_at"]) >= started
    await redis.aclose()
