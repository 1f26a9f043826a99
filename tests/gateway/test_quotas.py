"""Quotas through the real Dispatcher on a real Redis (no worker: its FINAL is written as a
worker writes it): the refusal's error, tokens settled on the FINAL and refunded without one,
one charge per request id whatever its callers, leases renewed while a caller waits."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.errors import AlreadyExists, QuotaViolation, ResourceExhausted
from fleet_common.keys import (
    live_workers,
    quota_leases,
    quota_request_window,
    quota_token_window,
    result_stream,
)
from fleet_common.wire import Final, GenerationTask, Sampling, StreamEvent, event_fields
from fleet_server.status import RETRY_PUSHBACK_KEY, rich_status
from gateway.dispatch import Dispatcher
from gateway.quota_scripts import Refusal
from gateway.quotas import JobItemQuota, Quotas, refusal_error
from gateway.request_claims import fingerprint
from gateway.request_run import RequestRun
from gateway.tenant_policies import TenantPolicies
from model_registry.records import TenantPolicy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=10)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def queue(redis: Redis) -> str:
    name = f"fleet.7b.tiny.{uuid.uuid4().hex[:8]}"
    await redis.zadd(live_workers(name), {"w": time.time() + 600})
    return name


def _task(tenant: str, request_id: str | None = None, *, max_tokens: int = 20,
          prompt: int = 5) -> GenerationTask:
    now = time.time()
    return GenerationTask(
        request_id=request_id or uuid.uuid4().hex, tenant=tenant, model="tiny",
        model_version="v1", prompt_token_ids=list(range(1, prompt + 1)), stop_token_ids=[2],
        sampling=Sampling(max_tokens=max_tokens, top_p=1.0, repetition_penalty=1.0, n=1),
        priority=pb.PRIORITY_NORMAL, deadline_unix=now + 30, enqueued_at_unix=now, attempt=1)


async def _submit(dispatcher: Dispatcher, task: GenerationTask, queue: str) -> RequestRun:
    return await dispatcher.submit(task, queue, "7b",
                                   fingerprint=fingerprint(task, caller_seed=None))


async def _finish(redis: Redis, dispatcher: Dispatcher, run: RequestRun, *, prompt: int,
                  completion: int) -> None:
    final = StreamEvent(attempt=run.task.attempt,
                        final=Final(prompt_tokens=prompt, completion_tokens=completion))
    await redis.xadd(result_stream(run.scope), event_fields(final))
    async for _ in dispatcher.events(run):
        pass
    await dispatcher.finish(run)


async def _window(redis: Redis, key: str) -> int:
    return sum(int(v) for v in (await redis.hgetall(key)).values())


@pytest.fixture
async def fleet(redis: Redis, tenant: str) -> AsyncIterator[tuple[Dispatcher, TenantPolicies]]:
    policies = TenantPolicies()
    dispatcher = Dispatcher(redis, worker_liveness_s=5, lease_check_s=60,
                            quotas=Quotas(redis, policies, lease_ttl_s=30))
    dispatcher.start()
    yield dispatcher, policies
    await dispatcher.aclose()


async def test_tokens_are_settled_on_the_final_and_refunded_without_one(
        redis: Redis, tenant: str, queue: str,
        fleet: tuple[Dispatcher, TenantPolicies]) -> None:
    dispatcher, policies = fleet
    policies.install([TenantPolicy(tenant, tokens_per_minute=60)])
    done = await _submit(dispatcher, _task(tenant, max_tokens=20), queue)  # reserves 25
    cancelled = await _submit(dispatcher, _task(tenant, max_tokens=20), queue)  # 25 more
    with pytest.raises(ResourceExhausted) as caught:
        await _submit(dispatcher, _task(tenant, max_tokens=20), queue)
    assert caught.value.reason == "tokens_per_minute"
    assert "50 tokens used or reserved in the last 60 s; this request reserves 25 (prompt 5 + " \
           "max_tokens 20 x n 1)" in caught.value.message
    await _finish(redis, dispatcher, done, prompt=5, completion=3)
    assert await _window(redis, quota_token_window(tenant)) == 8 + 25
    await dispatcher.abandon(cancelled)  # no final: its reservation comes back
    assert await _window(redis, quota_token_window(tenant)) == 8
    assert await redis.zcard(quota_leases(tenant)) == 0


async def test_one_request_id_is_charged_once_whatever_its_callers(
        redis: Redis, tenant: str, queue: str,
        fleet: tuple[Dispatcher, TenantPolicies]) -> None:
    dispatcher, policies = fleet
    policies.install([TenantPolicy(tenant, max_concurrent=1, requests_per_minute=2)])
    task = _task(tenant, "shared")
    first = await _submit(dispatcher, task, queue)
    second = await _submit(dispatcher, task, queue)  # attaches: at the limit, yet admitted
    with pytest.raises(AlreadyExists):  # another request under the id: refused, free
        await _submit(dispatcher, _task(tenant, "shared", max_tokens=7), queue)
    with pytest.raises(ResourceExhausted, match="max_concurrent"):
        await _submit(dispatcher, _task(tenant), queue)
    assert await _window(redis, quota_request_window(tenant)) == 1
    await dispatcher.abandon(first)  # the other caller still waits: the lease stays
    assert await redis.zcard(quota_leases(tenant)) == 1
    await _finish(redis, dispatcher, second, prompt=5, completion=1)
    assert await redis.zcard(quota_leases(tenant)) == 0
    retry = await _submit(dispatcher, task, queue)  # reads the stored result: free
    await _finish(redis, dispatcher, retry, prompt=5, completion=1)
    assert await _window(redis, quota_request_window(tenant)) == 1
    assert await _window(redis, quota_token_window(tenant)) == 6  # settled once
    another = await _submit(dispatcher, _task(tenant), queue)
    await dispatcher.abandon(another)
    with pytest.raises(ResourceExhausted, match="requests_per_minute"):
        await _submit(dispatcher, _task(tenant), queue)


async def test_a_tenant_without_limits_costs_no_redis_call(
        redis: Redis, tenant: str, queue: str,
        fleet: tuple[Dispatcher, TenantPolicies]) -> None:
    dispatcher, _ = fleet
    runs = [await _submit(dispatcher, _task(tenant), queue) for _ in range(3)]
    assert not await redis.exists(quota_request_window(tenant), quota_leases(tenant))
    for run in runs:
        await dispatcher.abandon(run)


async def test_a_waiting_callers_lease_is_renewed_and_a_lost_gateways_lapses(
        redis: Redis, tenant: str, queue: str) -> None:
    policies = TenantPolicies([TenantPolicy(tenant, max_concurrent=2)])
    quotas = Quotas(redis, policies, lease_ttl_s=1.0)
    lost = Quotas(redis, policies, lease_ttl_s=1.0)  # a gateway that stops renewing
    dispatcher = Dispatcher(redis, worker_liveness_s=5, lease_check_s=60, quotas=quotas)
    elsewhere = Dispatcher(redis, worker_liveness_s=5, lease_check_s=60, quotas=lost)
    quotas.start()
    try:
        kept = await _submit(dispatcher, _task(tenant), queue)
        await _submit(elsewhere, _task(tenant), queue)
        with pytest.raises(ResourceExhausted):
            await _submit(dispatcher, _task(tenant), queue)
        await asyncio.sleep(1.6)  # past the TTL: only the renewed lease is left
        assert await redis.zcard(quota_leases(tenant)) == 2  # not reaped until an admission
        admitted = await _submit(dispatcher, _task(tenant), queue)
        assert await redis.zscore(quota_leases(tenant), kept.scope) is not None
        assert await redis.zcard(quota_leases(tenant)) == 2
        for run in (kept, admitted):
            await dispatcher.abandon(run)
    finally:
        await quotas.aclose()
        await dispatcher.aclose()
        await elsewhere.aclose()


def test_a_refusal_maps_to_quota_failure_retry_info_and_pushback() -> None:
    task = _task("acme", max_tokens=100)
    error = refusal_error(task, (Refusal("max_concurrent", 4, 4, 2_500),
                                 Refusal("requests_per_minute", 10, 10, 12_340)))
    assert (error.reason, error.retry_after_s) == ("requests_per_minute", 12.34)
    assert error.violations == (
        QuotaViolation("tenant:acme", "max_concurrent: limit 4, 4 requests generating now"),
        QuotaViolation("tenant:acme", "requests_per_minute: limit 10, 10 requests admitted in "
                                      "the last 60 s"))
    assert error.message.startswith("tenant 'acme' is over its requests_per_minute quota")
    assert error.message.endswith("retry in 12.34 s")

    from google.rpc import error_details_pb2, status_pb2

    status = rich_status(error)
    assert status.code.name == "RESOURCE_EXHAUSTED"
    trailers = dict(status.trailing_metadata)
    assert trailers[RETRY_PUSHBACK_KEY] == "12340"
    details = status_pb2.Status.FromString(trailers["grpc-status-details-bin"]).details
    failure, retry = error_details_pb2.QuotaFailure(), error_details_pb2.RetryInfo()
    assert details[0].Unpack(failure) and details[1].Unpack(retry)
    assert [(v.subject, v.description) for v in failure.violations] == [
        (v.subject, v.description) for v in error.violations]
    assert retry.retry_delay.ToMilliseconds() == 12340

    never = refusal_error(task, (Refusal("tokens_per_minute", 50, 0, Refusal.NEVER),))
    assert never.retry_after_s is None and "can never be admitted" in never.message
    assert RETRY_PUSHBACK_KEY not in dict(rich_status(never).trailing_metadata)


async def test_queued_job_items_are_refused_past_the_limit(redis: Redis, tenant: str) -> None:
    quota = JobItemQuota(redis, TenantPolicies([TenantPolicy(tenant, max_queued_job_items=5)]))
    assert await quota.reserve(tenant, 5) == 5
    with pytest.raises(ResourceExhausted) as caught:
        await quota.reserve(tenant, 1)
    assert caught.value.reason == "max_queued_job_items"
    assert caught.value.violations[0].description == (
        "max_queued_job_items: limit 5, 5 job items queued; this job adds 1")
    assert await quota.release(tenant, 2) == 3
    assert await quota.reserve(tenant, 2) == 5
