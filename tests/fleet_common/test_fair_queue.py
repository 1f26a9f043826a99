"""The fair waiting lines' scripts against a real Redis: strict priorities, start-time fair
queuing across tenants by token cost and weight, expired items dropped, tickets topped up."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common import fair_queue
from fleet_common.wire import GenerationTask, Sampling

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def queue() -> str:
    return f"fleet.test.tiny.{uuid.uuid4().hex[:8]}"


def _task(tenant: str, name: str, *, priority: int = pb.PRIORITY_NORMAL, prompt: int = 10,
          max_tokens: int = 90, deadline_in_s: float = 60) -> GenerationTask:
    return GenerationTask(request_id=name, tenant=tenant, prompt_token_ids=[1] * prompt,
                          sampling=Sampling(max_tokens=max_tokens, n=1), priority=priority,
                          deadline_unix=time.time() + deadline_in_s)


async def _enqueue(redis: Redis, queue: str, task: GenerationTask, weight: int = 1) -> None:
    script = redis.register_script(fair_queue.ENQUEUE)
    level = fair_queue.level_of(task.priority)
    await script(keys=fair_queue.enqueue_keys(queue, level, task.tenant),
                 args=fair_queue.enqueue_args(task.tenant, weight, fair_queue.item_of(task),
                                              f"ticket-{task.request_id}".encode()))


async def _take_all(redis: Redis, queue: str) -> list[str]:
    taker = fair_queue.FairTaker(redis, queue)
    names = []
    while (task := await taker.take()) is not None:
        names.append(task.request_id)
    return names


async def test_a_high_request_goes_before_every_waiting_normal_and_low_one(
        redis: Redis, queue: str) -> None:
    for i in range(3):
        await _enqueue(redis, queue, _task("a", f"low{i}", priority=pb.PRIORITY_LOW))
    await _enqueue(redis, queue, _task("a", "normal", priority=pb.PRIORITY_UNSPECIFIED))
    await _enqueue(redis, queue, _task("b", "high", priority=pb.PRIORITY_HIGH))
    assert await _take_all(redis, queue) == ["high", "normal", "low0", "low1", "low2"]
    assert int(await redis.get(fair_queue.waiting_count(queue))) == 0


async def test_a_tenant_arriving_behind_a_flood_is_served_next_not_last(
        redis: Redis, queue: str) -> None:
    for i in range(20):
        await _enqueue(redis, queue, _task("flood", f"a{i}"))
    taker = fair_queue.FairTaker(redis, queue)
    first = [(await taker.take()).request_id for _ in range(5)]  # type: ignore[union-attr]
    for i in range(3):
        await _enqueue(redis, queue, _task("quiet", f"b{i}"))
    order = first + await _take_all(redis, queue)
    assert order[:5] == [f"a{i}" for i in range(5)]
    # From the moment it arrives, the quiet tenant alternates with the flood.
    assert order[5:11] in (["b0", "a5", "b1", "a6", "b2", "a7"],
                           ["a5", "b0", "a6", "b1", "a7", "b2"]), order
    assert sorted(order) == sorted([f"a{i}" for i in range(20)] + ["b0", "b1", "b2"])


async def test_shares_follow_weights_and_token_cost(redis: Redis, queue: str) -> None:
    for i in range(40):
        await _enqueue(redis, queue, _task("heavy", f"h{i}"), weight=3)
        await _enqueue(redis, queue, _task("light", f"l{i}"), weight=1)
        await _enqueue(redis, queue, _task("long", f"g{i}", max_tokens=990), weight=1)
    order = (await _take_all(redis, queue))[:50]
    counts = {p: sum(name.startswith(p) for name in order) for p in "hlg"}
    # Token shares 3 : 1 : 1, and a "long" request costs 10 of the others.
    assert 34 <= counts["h"] <= 38 and 11 <= counts["l"] <= 13 and 1 <= counts["g"] <= 2, counts


async def test_an_idle_tenant_gets_no_credit_for_the_time_it_was_away(
        redis: Redis, queue: str) -> None:
    await _enqueue(redis, queue, _task("b", "b0"))
    assert await _take_all(redis, queue) == ["b0"]
    for i in range(10):
        await _enqueue(redis, queue, _task("a", f"a{i}"))
    taker = fair_queue.FairTaker(redis, queue)
    for _ in range(8):
        await taker.take()
    for i in range(1, 4):
        await _enqueue(redis, queue, _task("b", f"b{i}"))
    # b was idle while a ran 8: it does not now get 8 in a row.
    assert (await _take_all(redis, queue))[:4] in (["b1", "a8", "b2", "a9"],
                                                   ["a8", "b1", "a9", "b2"])


async def test_requests_past_their_deadline_are_dropped_not_taken(
        redis: Redis, queue: str) -> None:
    await _enqueue(redis, queue, _task("a", "stale", deadline_in_s=-5))
    await _enqueue(redis, queue, _task("a", "fresh"))
    assert await _take_all(redis, queue) == ["fresh"]
    assert int(await redis.get(fair_queue.waiting_count(queue))) == 0


async def test_a_ticket_is_added_only_while_fewer_tickets_than_items_wait(
        redis: Redis, queue: str) -> None:
    top_up = redis.register_script(fair_queue.TOP_UP)
    keys = [fair_queue.waiting_count(queue), queue]
    for i in range(2):
        await _enqueue(redis, queue, _task("a", f"a{i}"))
    assert await top_up(keys=keys, args=[b"spare"]) == 0
    await redis.rpop(queue)  # a ticket went down with a worker
    assert await top_up(keys=keys, args=[b"spare"]) == 1
    assert await top_up(keys=keys, args=[b"spare"]) == 0
    assert await redis.llen(queue) == 2


async def test_with_the_open_slots_full_only_a_tenant_under_its_share_is_taken(
        redis: Redis, queue: str) -> None:
    for i in range(3):
        await _enqueue(redis, queue, _task("a", f"a{i}"))
    taker = fair_queue.FairTaker(redis, queue)
    assert await taker.take(open_slots=4, running={"a": 4}) == fair_queue.HELD_BACK
    await _enqueue(redis, queue, _task("b", "b0"))
    await _enqueue(redis, queue, _task("b", "b1"))
    await _enqueue(redis, queue, _task("b", "b2"))
    # Shares of 4 open slots between a and b: 2 each. b runs 1, so one more of b may start.
    first = await taker.take(open_slots=4, running={"a": 3, "b": 1})
    assert isinstance(first, GenerationTask) and first.request_id == "b0"
    assert await taker.take(open_slots=4, running={"a": 3, "b": 2}) == fair_queue.HELD_BACK
    # b0's start was charged to b's share as any other: with open slots free, a catches up.
    assert await _take_all(redis, queue) == ["a0", "a1", "b1", "a2", "b2"]


async def test_reserve_shares_follow_weights_and_count_tenants_that_only_run(
        redis: Redis, queue: str) -> None:
    await _enqueue(redis, queue, _task("b", "b0"), weight=3)
    taker = fair_queue.FairTaker(redis, queue)
    # a runs 3 and waits for nothing; b (weight 3 of 4) has a share of 3 of the 4 open slots.
    for running_b, expected in ((3, fair_queue.HELD_BACK), (2, "b0")):
        task = await taker.take(open_slots=4, running={"a": 3, "b": running_b})
        assert (task if isinstance(task, str) else task.request_id) == expected  # type: ignore[union-attr]


async def test_held_back_is_told_from_nothing_waiting(redis: Redis, queue: str) -> None:
    taker = fair_queue.FairTaker(redis, queue)
    assert await taker.take(open_slots=2, running={"a": 2}) is None
    await _enqueue(redis, queue, _task("a", "late", deadline_in_s=-5))
    assert await taker.take(open_slots=2, running={"a": 2}) is None
