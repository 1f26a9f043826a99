"""A worker's fair-share reserve through the real stack: a gateway, one Redis, and a real worker
process (Celery, the fair take, result streams) whose engine holds every request until the test
releases it (`tests.support.holding_worker`), so what runs and what waits can be counted.

The worker has 3 slots, 1 of them reserved (FLEET_FAIR_SHARE_RESERVE=1). Tenant A floods it with
4 requests: A fills the 2 open slots and the rest wait, the reserve slot stays free. Tenant B's
one request then starts at once in the reserve slot, ahead of A's waiting ones; released, every
request ends OK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import ManagedProcess, start_gateway, wait_for_heartbeat
from fleet_common import fair_queue
from fleet_common.keys import worker_status
from tests.support.holding_fleet import registry_with_model, spawn_holding_worker

pytestmark = pytest.mark.timeout(180)

MODEL = "tiny-reserve"
KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
WORKER = "holding-reserve"


@dataclass
class Fleet:
    target: str
    redis_url: str
    queue: str
    release: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("reserve")
    registry_url, served = registry_with_model(tmp, MODEL, tiny_checkpoints["infill"])
    release, logs = tmp / "release", tmp / "logs"
    worker = spawn_holding_worker(WORKER, registry_url=registry_url, model=MODEL,
                                  redis_url=redis_url, release=release, log_dir=logs,
                                  env={"FLEET_CONCURRENCY": "3", "FLEET_MAX_NUM_SEQS": "3",
                                       "FLEET_FAIR_SHARE_RESERVE": "1"})
    processes: list[ManagedProcess] = [worker]
    env = {"FLEET_REGISTRY_URL": registry_url, "FLEET_REDIS_URL": redis_url,
           "FLEET_API_KEYS": json.dumps(KEYS), "FLEET_ADMISSION_CONTROL": "false",
           "FLEET_WORKER_LIVENESS_S": "3"}
    try:
        gateway, port = start_gateway(env, logs)
        processes.append(gateway)
        wait_for_heartbeat(worker, redis_url=redis_url, queue=served.queue, worker=WORKER,
                           timeout=120)
        yield Fleet(f"127.0.0.1:{port}", redis_url, served.queue, release)
    finally:
        for process in reversed(processes):
            process.stop()


async def _admitted(stub: InferenceServiceStub, key: str) -> grpc.aio.UnaryStreamCall:
    """A streaming call once it is queued (the gateway's first message says so)."""
    call = stub.StreamComplete(
        api.StreamCompleteRequest(model=MODEL, prompt="def f():",
                                  sampling=pb.SamplingParams(max_tokens=4)),
        timeout=60, metadata=[("authorization", f"Bearer {key}")])
    await call.read()
    return call


async def _until(what: str, check: Callable[[], Awaitable[tuple[bool, object]]],
                 timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        ok, seen = await check()
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last seen {seen}")
        await asyncio.sleep(0.1)


async def test_a_light_tenant_starts_in_the_reserve_slot_while_a_flood_waits(
        fleet: Fleet) -> None:
    redis = Redis.from_url(fleet.redis_url)
    channel = grpc.aio.insecure_channel(fleet.target)
    stub = InferenceServiceStub(channel)

    async def counts() -> tuple[int, int]:
        in_flight = await redis.hget(worker_status(WORKER), "tasks_in_flight")
        waiting = await redis.get(fair_queue.waiting_count(fleet.queue))
        return int(in_flight or 0), int(waiting or 0)

    async def counts_are(expected: tuple[int, int]) -> tuple[bool, object]:
        seen = await counts()
        return seen == expected, seen

    try:
        flood = [await _admitted(stub, "key-a") for _ in range(4)]
        await _until("A fills the 2 open slots, 2 wait", lambda: counts_are((2, 2)))
        await asyncio.sleep(1.0)  # the reserve thread asks again every 20 ms: still held back
        assert await counts() == (2, 2), "a flooding tenant took the reserve slot"

        light = await _admitted(stub, "key-b")
        await _until("B runs in the reserve slot, A's 2 still wait",
                     lambda: counts_are((3, 2)))

        fleet.release.touch()
        for call in [*flood, light]:
            while await call.read() is not grpc.aio.EOF:
                pass
            assert await call.code() == grpc.StatusCode.OK
        await _until("idle again", lambda: counts_are((0, 0)))
    finally:
        fleet.release.unlink(missing_ok=True)
        await channel.close()
        await redis.aclose()
