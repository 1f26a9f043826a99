"""The gateway's batching task publisher against a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from fleet_common import fair_queue
from gateway.task_publisher import FairEntry, TaskPublisher

# A stuck Redis call fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)


async def _round_trips(redis: Redis) -> int:
    """Pipelines sent: each carries one wake (XADD) however many requests it holds."""
    return int((await redis.info("commandstats")).get("cmdstat_xadd", {}).get("calls", 0))


def _entry(queue: str, name: str, tenant: str = "t") -> FairEntry:
    item = f"1 9999999999|{name}".encode()
    return FairEntry(fair_queue.enqueue_keys(queue, "normal", tenant),
                     fair_queue.enqueue_args(tenant, 1, item, f"ticket-{name}".encode()))


async def _line(redis: Redis, queue: str, tenant: str = "t") -> list[str]:
    """The items waiting in the tenant's line, first queued first."""
    raw = await redis.lrange(fair_queue.tenant_line(queue, "normal", tenant), 0, -1)
    return [item.decode().partition("|")[2] for item in reversed(raw)]


def _wake_into(key: str):  # type: ignore[no-untyped-def]
    def add_wake(pipe: object) -> None:
        pipe.xadd(key, {"w": 1})  # type: ignore[attr-defined]
    return add_wake


@dataclass
class _Setup:
    redis: Redis
    publisher: TaskPublisher
    wake: str
    queue: str


@pytest.fixture
async def setup(redis_url: str) -> AsyncIterator[_Setup]:
    redis = Redis.from_url(redis_url)
    wake = f"test:wake:{uuid.uuid4().hex}"
    queue = f"test:queue:{uuid.uuid4().hex}"
    yield _Setup(redis, TaskPublisher(redis, add_wake=_wake_into(wake)), wake, queue)
    await redis.delete(wake, queue)
    await redis.aclose()


async def test_concurrent_requests_share_writes_and_keep_their_order(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    wake = f"test:wake:{uuid.uuid4().hex}"
    publisher = TaskPublisher(redis, add_wake=_wake_into(wake))
    queues = [f"test:queue:{uuid.uuid4().hex}" for _ in range(2)]
    before = await _round_trips(redis)

    await asyncio.gather(*(publisher.publish(_entry(queues[i % 2], f"m{i}"))
                           for i in range(200)))

    for q, queue in enumerate(queues):
        # The take script pops from the right: the first admitted is the first served.
        assert await _line(redis, queue) == [f"m{i}" for i in range(q, 200, 2)]
        tickets = [m.decode() for m in await redis.lrange(queue, 0, -1)][::-1]
        assert tickets == [f"ticket-m{i}" for i in range(q, 200, 2)]
        assert int(await redis.get(fair_queue.waiting_count(queue))) == 100
    trips = await _round_trips(redis) - before
    assert trips < 200 / 4, f"{trips} round trips for 200 requests: nothing was batched"
    assert publisher.batches_written == await redis.xlen(wake)
    await redis.delete(wake, *queues)
    await redis.aclose()


async def test_an_idle_publisher_writes_a_request_at_once(setup: _Setup) -> None:
    for i in range(3):
        await setup.publisher.publish(_entry(setup.queue, f"x{i}"))
        assert await _line(setup.redis, setup.queue) == [f"x{j}" for j in range(i + 1)]
    assert setup.publisher.batches_written == 3


async def test_a_caller_that_leaves_does_not_stop_the_others(setup: _Setup) -> None:
    calls = [asyncio.ensure_future(setup.publisher.publish(_entry(setup.queue, f"m{i}")))
             for i in range(10)]
    await asyncio.sleep(0)
    calls[3].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(r is None for i, r in enumerate(results) if i != 3)
    # The message of the caller that left was already handed to the write; it is queued too
    # (the dispatcher cancels such a request by its id).
    assert len(await _line(setup.redis, setup.queue)) == 10


async def test_every_waiting_request_hears_a_redis_failure() -> None:
    broken = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    publisher = TaskPublisher(broken, add_wake=_wake_into("unused"))
    results = await asyncio.wait_for(
        asyncio.gather(*(publisher.publish(_entry("q", "m")) for _ in range(20)),
                       return_exceptions=True), 10)
    assert len(results) == 20
    for result in results:
        assert isinstance(result, (RedisConnectionError, OSError)), repr(result)
    with pytest.raises((RedisConnectionError, OSError)):
        await asyncio.wait_for(publisher.publish(_entry("q", "m")), 10)
    await broken.aclose()
