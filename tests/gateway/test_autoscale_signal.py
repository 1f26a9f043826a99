"""The autoscaling signal over a real Redis: queued work at every priority plus work in flight,
over the capacity the live workers publish."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common import fair_queue
from fleet_common.keys import draining_workers, live_workers, worker_status
from fleet_common.wire import GenerationTask, Sampling
from gateway.autoscale_signal import DESIRED, AutoscaleSignal
from model_registry.records import ServedModel

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _served(model: str) -> ServedModel:
    return ServedModel(model=model, version="v1", pool="7b", checkpoint="c", checkpoint_dir="/x",
                       template="t@1", chat_format="", chat_template="", supports_infill=False,
                       context_limit=2048, tensor_parallel_size=1, dtype="auto")


async def _enqueue(redis: Redis, queue: str, priority: int) -> None:
    task = GenerationTask(request_id=uuid.uuid4().hex, tenant="t", prompt_token_ids=[1],
                          sampling=Sampling(max_tokens=4, n=1), priority=priority,
                          deadline_unix=time.time() + 60)
    level = fair_queue.level_of(priority)
    await redis.register_script(fair_queue.ENQUEUE)(
        keys=fair_queue.enqueue_keys(queue, level, "t"),
        args=fair_queue.enqueue_args("t", 1, fair_queue.item_of(task), b"ticket"))


async def _worker(redis: Redis, queue: str, name: str, *, in_flight: int, capacity: int,
                  draining: bool = False) -> None:
    await redis.zadd((draining_workers if draining else live_workers)(queue), {name: time.time()})
    await redis.hset(worker_status(name), mapping={"tasks_in_flight": in_flight,
                                                   "capacity": capacity})


async def test_desired_workers_counts_queued_at_every_priority_and_in_flight(
        redis: Redis) -> None:
    served = _served(f"tiny-{uuid.uuid4().hex[:8]}")
    queue = served.queue
    signal = AutoscaleSignal(redis, lambda: [served], liveness_s=5, interval_s=1,
                             default_capacity=8)
    assert (await signal.refresh())[queue].desired == 0
    for priority in (pb.PRIORITY_HIGH, pb.PRIORITY_NORMAL, pb.PRIORITY_LOW, pb.PRIORITY_LOW):
        await _enqueue(redis, queue, priority)
    # No live worker: the default capacity sizes the first one (scale from zero).
    load = (await signal.refresh())[queue]
    assert load.depths == (1, 1, 2) and load.live == 0 and load.desired == 1
    await _worker(redis, queue, f"w1-{queue}", in_flight=4, capacity=4)
    await _worker(redis, queue, f"w2-{queue}", in_flight=3, capacity=4, draining=True)
    load = (await signal.refresh())[queue]
    # 4 queued + 7 in flight (the draining worker's too) over 4 per worker.
    assert (load.in_flight, load.live, load.capacity, load.desired) == (7, 1, 4, 3)
    assert DESIRED.labels(queue, served.model, "v1", "7b")._value.get() == 3
    taker = fair_queue.FairTaker(redis, queue)
    while await taker.take() is not None:
        pass
    # Queue empty, long requests still running: the signal stays up.
    assert (await signal.refresh())[queue].desired == 2
