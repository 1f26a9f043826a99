"""infra/redis/redis.conf in a real redis-server: it loads, it says what the fleet needs, and
the requests a gateway queued (their waiting-line items and tickets) survive a restart, even a
crash of the server, byte for byte; a kombu consumer then receives the tickets as a Celery
worker does, and the take script hands out the requests, first queued first."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Queue
from kombu.message import Message
from redis.asyncio import Redis

from fleet_common import fair_queue
from fleet_common.celery_app import make_celery_app
from fleet_common.task_message import ticket_message
from fleet_common.wire import GenerationTask, Sampling
from gateway.task_publisher import FairEntry, TaskPublisher
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(120)

CONFIG = Path(__file__).resolve().parents[2] / "infra" / "redis" / "redis.conf"
QUEUE = "fleet.7b.tiny.v1"


def _task() -> GenerationTask:
    now = time.time()
    return GenerationTask(request_id=uuid.uuid4().hex, tenant="acme", model="tiny",
                          model_version="v1", prompt_token_ids=[1, 822],
                          sampling=Sampling(max_tokens=8, top_p=1.0, n=1),
                          deadline_unix=now + 600, enqueued_at_unix=now, attempt=1)


async def _queue_tasks(url: str, count: int) -> list[GenerationTask]:
    """Queues `count` tasks as the gateway does (its publisher: item and ticket per request)."""
    tasks = [_task() for _ in range(count)]
    redis = Redis.from_url(url)
    publisher = TaskPublisher(redis, add_wake=lambda pipe: None)
    for task in tasks:
        await publisher.publish(FairEntry(
            fair_queue.enqueue_keys(QUEUE, "normal", task.tenant),
            fair_queue.enqueue_args(task.tenant, 1, fair_queue.item_of(task),
                                    ticket_message(QUEUE, f"acme/{task.request_id}#1"))))
    await redis.aclose()
    return tasks


async def _queued(url: str) -> list[bytes]:
    """The tickets on the Celery queue, then the items in the tenant's line."""
    redis = Redis.from_url(url)
    try:
        return [*await redis.lrange(QUEUE, 0, -1),
                *await redis.lrange(fair_queue.tenant_line(QUEUE, "normal", "acme"), 0, -1)]
    finally:
        await redis.aclose()


async def _take_all(url: str) -> list[GenerationTask]:
    redis = Redis.from_url(url)
    taker = fair_queue.FairTaker(redis, QUEUE)
    try:
        taken = []
        while (task := await taker.take()) is not None:
            taken.append(task)
        return taken
    finally:
        await redis.aclose()


def _consume(url: str, count: int) -> list[Message]:
    """What a worker's Celery consumer receives from the queue (and acknowledges)."""
    app = make_celery_app(url, visibility_timeout_s=3600)
    received: list[Message] = []

    def on_message(body: object, message: Message) -> None:
        received.append(message)
        message.ack()

    with app.connection_for_read() as connection, connection.Consumer(
            Queue(QUEUE), accept=["json"], callbacks=[on_message]):
        deadline = time.monotonic() + 10
        while len(received) < count and time.monotonic() < deadline:
            connection.drain_events(timeout=1)
    return received


async def _config(url: str, name: str) -> str:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        return str((await redis.config_get(name))[name])
    finally:
        await redis.aclose()


@pytest.fixture
def aof_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory, appendonly=True, config=CONFIG) as server:
        yield server


async def test_the_config_loads_and_sets_what_the_fleet_needs(aof_server: RedisServer) -> None:
    expected = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction",
                "save": "", "timeout": "0"}
    assert {name: await _config(aof_server.url, name) for name in expected} == expected
    assert int(await _config(aof_server.url, "maxmemory")) > 0


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
async def test_queued_tasks_survive_a_restart_and_a_worker_then_takes_them(
        aof_server: RedisServer, crash: bool) -> None:
    tasks = await _queue_tasks(aof_server.url, 3)
    before = await _queued(aof_server.url)
    assert len(before) == 6
    aof_server.restart(crash=crash)
    assert await _queued(aof_server.url) == before, "the queue changed across the restart"
    received = _consume(aof_server.url, 3)
    assert [m.headers["task"] for m in received] == [fair_queue.FAIR_TAKE_TASK] * 3
    assert await _take_all(aof_server.url) == tasks  # first queued first
    assert await _queued(aof_server.url) == []


async def test_without_the_append_only_file_a_restart_empties_the_queue(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """What the config prevents, and proof that the restarts above really restart."""
    with redis_server(tmp_path_factory) as server:
        await _queue_tasks(server.url, 3)
        server.restart()
        assert await _queued(server.url) == []
