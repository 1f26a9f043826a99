"""A worker losing Redis: a request whose stream write fails ends UNAVAILABLE (the gateway
re-runs it), never INTERNAL; and once Redis is back after a restart, the worker's pooled
connections work from the first command on (a stale one would fail a task's pre-start check,
and Celery would acknowledge that task without running it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from fleet_common.keys import request_scope, result_stream
from fleet_common.wire import ErrorCode, GenerationTask, Sampling, StreamEvent, event_from_fields
from tests.support.fake_engine import FakeEngine, Script
from tests.support.redis_server import RedisServer, redis_server
from workers.background import heartbeat
from workers.generation import InFlight, RequestRunner
from workers.result_stream import Fence, ResultStreamWriter

pytestmark = pytest.mark.timeout(60)


class _WriterLosingRedis(ResultStreamWriter):
    """Writes like the real writer, except that the `fail_at`-th write fails as a dropped
    connection does."""

    def __init__(self, redis: Redis, fail_at: int) -> None:
        super().__init__(redis, ttl_s=120, max_len=1000)
        self._writes = 0
        self._fail_at = fail_at

    async def write(self, scope: str, event: StreamEvent, fence: Fence) -> None:
        self._writes += 1
        if self._writes == self._fail_at:
            raise RedisConnectionError("Connection closed by server.")
        await super().write(scope, event, fence)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory) as server:
        yield server


def _task() -> GenerationTask:
    now = time.time()
    return GenerationTask(request_id=uuid.uuid4().hex, tenant="acme", model="tiny",
                          model_version="v1", prompt_token_ids=[1, 822],
                          sampling=Sampling(max_tokens=50, top_p=1.0, n=1),
                          deadline_unix=now + 30, enqueued_at_unix=now, attempt=1)


async def test_a_failed_stream_write_ends_the_attempt_unavailable_and_frees_the_engine(
        redis: Redis) -> None:
    engine = FakeEngine(Script(tokens=50, step_delay_s=0.01))
    runner = RequestRunner(engine=engine, writer=_WriterLosingRedis(redis, fail_at=4),
                           redis=redis, in_flight=InFlight(), worker_name="w1", pool="7b")
    task = _task()
    await asyncio.wait_for(runner.serve(task), 10)
    events = [event_from_fields(f)
              for _, f in await redis.xrange(result_stream(request_scope("acme",
                                                                         task.request_id)))]
    assert events[-1].WhichOneof("event") == "error"
    assert events[-1].error.code == ErrorCode.ERROR_CODE_UNAVAILABLE, events[-1].error
    assert engine.unfinished_requests() == 0 and engine.aborted == [f"acme/{task.request_id}#1"]


async def test_after_a_redis_restart_the_pooled_connections_work_from_the_first_command(
        server: RedisServer) -> None:
    redis = Redis.from_url(server.url)
    beating = asyncio.create_task(heartbeat(redis, "fleet.7b.tiny.v1", "w1", 0.1,
                                            status=dict))
    try:
        await asyncio.gather(*(redis.ping() for _ in range(8)))  # eight pooled connections
        server.kill()
        await asyncio.sleep(0.5)  # a few failed beats
        server.start()
        results = await asyncio.gather(*(redis.ping() for _ in range(8)),
                                       return_exceptions=True)
        assert results == [True] * 8, results
    finally:
        while not beating.done():  # redis-py 8.1 now and then swallows a cancel in a command
            beating.cancel()
            await asyncio.wait({beating}, timeout=0.5)
        await redis.aclose()
