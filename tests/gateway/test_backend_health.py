"""The gateway's Redis circuit breaker against a real redis-server that the tests kill and start
again on the same port, and against a "Redis" that accepts connections but never answers (a
partition): new calls are refused at once without touching Redis, and served again after."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import Unavailable
from fleet_common.keys import live_workers
from fleet_common.wire import GenerationTask, Sampling
from gateway.backend_health import BackendHealth
from gateway.dispatch import Dispatcher
from gateway.request_claims import fingerprint
from gateway.request_run import RequestRun
from tests.support.redis_server import RedisServer, redis_server

pytestmark = pytest.mark.timeout(60)

POOL = "7b"
QUEUE = "fleet.7b.tiny.v1"
PROBE_INTERVAL_S = 0.1
REFUSAL_BOUND_S = 0.050  # the bound on refusing a new call while Redis is down


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory) as server:
        yield server


class _Gateway:
    """A Dispatcher wired as gateway.server wires it, with its Redis connections counted."""

    def __init__(self, url: str, *, socket_timeout_s: float = 10.0) -> None:
        self.redis = Redis.from_url(url, socket_timeout=socket_timeout_s,
                                    socket_connect_timeout=1.0)
        self.health = BackendHealth(url, serving=self.redis, interval_s=PROBE_INTERVAL_S,
                                    timeout_s=0.2)
        self.dispatcher = Dispatcher(self.redis, worker_liveness_s=30, lease_check_s=60,
                                     health=self.health)
        self.connections_taken = 0
        pool = self.redis.connection_pool
        take: Callable[..., Any] = pool.get_connection

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.connections_taken += 1
            return await take(*args, **kwargs)

        pool.get_connection = counted  # type: ignore[method-assign]

    async def start(self) -> None:
        self.health.start()
        self.dispatcher.start()

    async def aclose(self) -> None:
        await self.dispatcher.aclose()
        await self.health.aclose()
        await self.redis.aclose()

    async def submit(self) -> RequestRun:
        now = time.time()
        task = GenerationTask(
            request_id=uuid.uuid4().hex, tenant="acme", model="tiny", model_version="v1",
            prompt_token_ids=[1, 822], sampling=Sampling(max_tokens=8, top_p=1.0,
                                                         repetition_penalty=1.0, n=1),
            priority=pb.PRIORITY_NORMAL, deadline_unix=now + 30, enqueued_at_unix=now,
            attempt=1)
        return await self.dispatcher.submit(task, QUEUE, POOL,
                                            fingerprint=fingerprint(task, caller_seed=None))

    async def submit_and_finish(self, calls: int) -> None:
        runs = await asyncio.gather(*(self.submit() for _ in range(calls)))
        for run in runs:
            await self.dispatcher.abandon(run)

    async def refusals(self, calls: int) -> list[float]:
        """Seconds each of `calls` new calls took to be refused (each must be)."""
        took = []
        for _ in range(calls):
            started = time.perf_counter()
            with pytest.raises(Unavailable, match="unreachable"):
                await self.submit()
            took.append(time.perf_counter() - started)
        return took


async def _until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def _live_worker(url: str) -> None:
    """What a worker's heartbeat writes, so the dispatcher has someone to queue for."""
    client = Redis.from_url(url)
    await client.zadd(live_workers(QUEUE), {"w1": time.time()})
    await client.aclose()


async def test_while_redis_is_down_new_calls_are_refused_at_once_without_touching_it(
        server: RedisServer) -> None:
    gateway = _Gateway(server.url)
    await gateway.start()
    try:
        await _live_worker(server.url)
        await gateway.submit_and_finish(5)
        server.kill()
        noticed = await _until(lambda: not gateway.health.up, 2.0, "the outage is noticed")
        assert noticed < 1.0
        taken = gateway.connections_taken
        took = await gateway.refusals(5)
        assert statistics.median(took) < REFUSAL_BOUND_S, took
        assert gateway.connections_taken == taken, "a refused call tried Redis"
    finally:
        await gateway.aclose()


async def test_once_redis_is_back_on_its_port_new_calls_are_served_again(
        server: RedisServer) -> None:
    """Served from the first call on: the connections pooled before the restart are sockets to
    the dead server, and each would fail its next command (the breaker drops them)."""
    gateway = _Gateway(server.url)
    await gateway.start()
    try:
        await _live_worker(server.url)
        await gateway.submit_and_finish(8)  # several pooled connections
        server.kill()
        await _until(lambda: not gateway.health.up, 2.0, "the outage is noticed")
        server.start()
        await _until(lambda: gateway.health.up, 2.0, "the recovery is noticed")
        await _live_worker(server.url)  # a Redis without persistence starts empty
        await gateway.submit_and_finish(8)
    finally:
        await gateway.aclose()


async def _silent_server() -> tuple[asyncio.Server, int]:
    """Accepts connections and never answers: a Redis behind a partition."""
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass
        writer.close()

    listener = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


async def test_a_redis_that_stops_answering_is_refused_at_once_not_after_the_socket_timeout(
        ) -> None:
    listener, port = await _silent_server()
    gateway = _Gateway(f"redis://127.0.0.1:{port}/0", socket_timeout_s=5.0)
    await gateway.start()
    try:
        await _until(lambda: not gateway.health.up, 2.0, "the silence is noticed")
        taken = gateway.connections_taken  # the result reader's, blocked on the silence
        took = await gateway.refusals(5)
        assert max(took) < REFUSAL_BOUND_S, took
        assert gateway.connections_taken == taken, "a refused call tried Redis"
    finally:
        await gateway.aclose()
        listener.close()


async def test_a_calls_connection_failure_sends_a_probe_and_only_a_failed_probe_trips(
        server: RedisServer) -> None:
    """Errors that are not the backend's send nothing; a connection failure sends a probe,
    and a reset connection while Redis answers (CI of 2026-12-03 11:26) is not an outage."""
    health = BackendHealth(server.url)
    try:
        assert health.saw(Unavailable("no live worker serves tiny@v1")) is None
        assert health.up
        with pytest.raises(Unavailable) as refused:
            raise Unavailable("queue backend unreachable") from RedisConnectionError("refused")
        probe = health.saw(refused.value)
        assert probe is not None, "a call's connection failure sends a probe"
        assert await probe
        assert health.up, "one reset connection while Redis answers is not an outage"
        server.kill()
        probe = health.saw(refused.value)
        assert probe is not None and not await probe
        assert not health.up
        with pytest.raises(Unavailable, match=r"unreachable for .*\(ConnectionError"):
            health.check()
        server.start()
        assert await health.probe_once()
        assert health.up
        health.check()
    finally:
        await health.aclose()
