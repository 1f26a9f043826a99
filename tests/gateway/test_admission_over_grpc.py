"""A full queue as a gRPC client sees it: the real servicer, dispatcher and admission control
behind FleetServer, over a real Redis and registry, answer RESOURCE_EXHAUSTED at once with
google.rpc.RetryInfo in the rich status and the grpc-retry-pushback-ms trailer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1 import inference_service_pb2_grpc as api_grpc
from fleet_common.keys import live_workers, worker_status
from fleet_server.bootstrap import FleetServer
from fleet_server.status import RETRY_PUSHBACK_KEY
from gateway.admission_control import admission_control_for
from gateway.auth import Authenticator
from gateway.dispatch import Dispatcher
from gateway.model_directory import ModelDirectory
from gateway.prompts import PromptBuilder
from gateway.servicer import InferenceServicer
from gateway.settings import GatewaySettings
from tests.support.model_directory import tiny_model_directory

pytestmark = pytest.mark.timeout(60)

MODEL = "tiny-7b"
WORKER = "w-full"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory,
           tiny_checkpoints: dict[str, Path]) -> ModelDirectory:
    return tiny_model_directory(tmp_path_factory.mktemp("registry"), tiny_checkpoints,
                                [(MODEL, "infill", "codellama-7b")])


@pytest.fixture
async def stub(models: ModelDirectory, redis_url: str
               ) -> AsyncIterator[api_grpc.InferenceServiceStub]:
    settings = GatewaySettings(redis_url=redis_url, admission_queue_factor=2.0)
    redis = Redis.from_url(redis_url, socket_timeout=10)
    dispatcher = Dispatcher(redis, worker_liveness_s=settings.worker_liveness_s,
                            lease_check_s=60, admission=admission_control_for(settings, redis))
    dispatcher.start()
    servicer = InferenceServicer(settings, models, PromptBuilder(settings.limits), dispatcher,
                                 Authenticator({}))
    server = FleetServer(["codellama.fleet.v1.InferenceService"])
    api_grpc.add_InferenceServiceServicer_to_server(servicer, server.server)
    port = await server.start("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield api_grpc.InferenceServiceStub(channel)
    await channel.close()
    await server.stop(0)
    await dispatcher.aclose()
    await redis.aclose()


async def test_a_full_queue_is_resource_exhausted_with_retry_info_and_pushback(
        stub: api_grpc.InferenceServiceStub, models: ModelDirectory, redis_url: str) -> None:
    queue = models.resolve(MODEL).queue
    redis = Redis.from_url(redis_url)
    # One live worker of capacity 1, busy, and two messages waiting: the bound of 3 is reached.
    await redis.zadd(live_workers(queue), {WORKER: time.time() + 60})
    await redis.hset(worker_status(WORKER), mapping={"capacity": 1, "tasks_in_flight": 1})
    await redis.lpush(queue, b"{}", b"{}")
    await redis.aclose()

    request = api.StreamCompleteRequest(model=MODEL, prompt="def fib(n):",
                                        sampling=pb.SamplingParams(max_tokens=8))
    started = time.monotonic()
    call = stub.StreamComplete(request, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert time.monotonic() - started < 2  # at once, not at the deadline
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"queue {queue} is full: 3 requests waiting or running, bound 3" in error.details()
    trailers = dict(error.trailing_metadata() or ())
    assert trailers[RETRY_PUSHBACK_KEY] == "1000"  # nothing has finished: the default second
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    (detail,) = status.details
    retry = error_details_pb2.RetryInfo()
    assert detail.Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 1000
