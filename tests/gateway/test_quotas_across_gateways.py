"""Quotas hold across gateway replicas: two real gateway processes on one Redis, one real worker
process, and bursts of concurrent calls from both gateways for a tenant with max_concurrent=L
and requests_per_minute=R. Exactly L are admitted while they generate and every other call is
refused with RESOURCE_EXHAUSTED carrying QuotaFailure, RetryInfo and the pushback trailer; the
refused calls consume nothing, so the next burst is admitted exactly up to R in the minute.

The worker is the real worker process with the fake engine seam holding each request until the
test releases it (`tests.support.holding_worker`): a burst can then be counted exactly, since no
admitted request ends while the others are being decided, and no vLLM start-up (half a minute)
is spent on a test about admission."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import ManagedProcess, start_gateway, wait_for_heartbeat
from fleet_server.status import RETRY_PUSHBACK_KEY
from model_registry.tenants import TenantStore
from tests.support.holding_fleet import registry_with_model, spawn_holding_worker

pytestmark = pytest.mark.timeout(180)

MODEL = "tiny-quota"
LIMIT = 4  # max_concurrent
RATE = 7  # requests_per_minute
BURST = 12  # calls per gateway per burst
KEY = "key-capped"


@dataclass
class Fleet:
    targets: list[str]
    release: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("quotas")
    registry_url, served = registry_with_model(
        tmp, MODEL, tiny_checkpoints["infill"],
        prepare=lambda store: TenantStore(store).create_tenant(
            "capped", policy={"max_concurrent": LIMIT, "requests_per_minute": RATE}))
    release = tmp / "release"
    logs = tmp / "logs"
    worker = spawn_holding_worker("holding", registry_url=registry_url, model=MODEL,
                                  redis_url=redis_url, release=release, log_dir=logs)
    processes: list[ManagedProcess] = [worker]
    env = {"FLEET_REGISTRY_URL": registry_url, "FLEET_REDIS_URL": redis_url,
           "FLEET_API_KEYS": json.dumps({KEY: "capped"}), "FLEET_ADMISSION_CONTROL": "false",
           "FLEET_WORKER_LIVENESS_S": "3", "FLEET_REGISTRY_REFRESH_S": "0.5"}
    try:
        with ThreadPoolExecutor(2) as pool:  # both gateways start while the worker does
            started = list(pool.map(lambda _: start_gateway(env, logs), range(2)))
        processes += [process for process, _ in started]
        wait_for_heartbeat(worker, redis_url=redis_url, queue=served.queue, worker="holding",
                           timeout=120)
        yield Fleet([f"127.0.0.1:{port}" for _, port in started], release)
    finally:
        for process in reversed(processes):
            process.stop()


@dataclass
class Burst:
    admitted: list[grpc.aio.UnaryStreamCall]
    refused: list[grpc.aio.AioRpcError]


async def _call(stub: InferenceServiceStub) -> grpc.aio.UnaryStreamCall | grpc.aio.AioRpcError:
    """A streaming call, once it is admitted (its first message: the gateway sends it as soon as
    the request is queued) or refused."""
    call = stub.StreamComplete(
        api.StreamCompleteRequest(model=MODEL, prompt="def f():",
                                  sampling=pb.SamplingParams(max_tokens=4)),
        timeout=60, metadata=[("authorization", f"Bearer {KEY}")])
    try:
        await call.read()
    except grpc.aio.AioRpcError as err:
        return err
    return call


async def _burst(stubs: list[InferenceServiceStub]) -> Burst:
    results = await asyncio.gather(*(_call(stub) for stub in stubs for _ in range(BURST)))
    return Burst([r for r in results if not isinstance(r, grpc.aio.AioRpcError)],
                 [r for r in results if isinstance(r, grpc.aio.AioRpcError)])


def _quota(error: grpc.aio.AioRpcError) -> tuple[list[str], int, int]:
    """The QuotaFailure descriptions, the RetryInfo delay and the pushback trailer (ms)."""
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert len(status.details) == 2
    assert status.details[0].Unpack(failure) and status.details[1].Unpack(retry)
    assert {v.subject for v in failure.violations} == {"tenant:capped"}
    pushback = int(dict(error.trailing_metadata() or ())[RETRY_PUSHBACK_KEY])
    return [v.description for v in failure.violations], retry.retry_delay.ToMilliseconds(), \
        pushback


async def _finish(fleet: Fleet, burst: Burst) -> None:
    fleet.release.touch()
    for call in burst.admitted:
        while await call.read() is not grpc.aio.EOF:
            pass
        assert await call.code() == grpc.StatusCode.OK
    fleet.release.unlink()


async def test_bursts_from_two_gateways_never_exceed_the_tenants_limits(fleet: Fleet) -> None:
    channels = [grpc.aio.insecure_channel(target) for target in fleet.targets]
    stubs = [InferenceServiceStub(channel) for channel in channels]
    try:
        # Burst 1: every call is decided while the admitted ones are held generating.
        first = await _burst(stubs)
        assert (len(first.admitted), len(first.refused)) == (LIMIT, 2 * BURST - LIMIT)
        for error in first.refused:
            descriptions, retry_ms, pushback = _quota(error)
            assert descriptions == [
                f"max_concurrent: limit {LIMIT}, {LIMIT} requests generating now"]
            assert retry_ms == pushback > 0
        await _finish(fleet, first)

        # Burst 2: the refused calls took no request, so RATE - LIMIT more fit in the minute.
        second = await _burst(stubs)
        assert (len(second.admitted), len(second.refused)) == (RATE - LIMIT,
                                                               2 * BURST - (RATE - LIMIT))
        for error in second.refused:
            descriptions, retry_ms, pushback = _quota(error)
            assert descriptions == [
                f"requests_per_minute: limit {RATE}, {RATE} requests admitted in the last 60 s"]
            # When burst 1's second leaves the window: under a minute after burst 1.
            assert 30_000 < retry_ms == pushback <= 60_000
            assert f"retry in {retry_ms / 1000:.2f} s" in error.details()
        await _finish(fleet, second)
    finally:
        for channel in channels:
            await channel.close()
