"""The quota scripts on a real Redis, with the clock passed in: each limit refuses past its value
with the right numbers and retry delay, a refusal takes nothing, reservations settle and are
refunded, leases of a vanished gateway lapse, and a request id's callers share one charge."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from fleet_common.keys import (
    quota_leases,
    quota_request_window,
    quota_reservations,
    quota_token_window,
    request_claim,
    request_scope,
)
from gateway.quota_scripts import Admission, QuotaScripts, Refusal

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000_000  # ms; a whole second
TTL = 30_000


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=10)
    yield client
    await client.aclose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _scope(tenant: str) -> str:
    return request_scope(tenant, uuid.uuid4().hex)


async def _admit(scripts: QuotaScripts, tenant: str, now: int, *, scope: str | None = None,
                 max_concurrent: int = 0, rpm: int = 0, tpm: int = 0, tokens: int = 10,
                 ttl: int = TTL) -> Admission:
    return await scripts.admit(tenant, scope or _scope(tenant), max_concurrent=max_concurrent,
                               requests_per_minute=rpm, tokens_per_minute=tpm, tokens=tokens,
                               lease_ttl_ms=ttl, now_ms=now)


async def _snapshot(redis: Redis, tenant: str) -> tuple[object, ...]:
    return (await redis.zrange(quota_leases(tenant), 0, -1, withscores=True),
            await redis.hgetall(quota_request_window(tenant)),
            await redis.hgetall(quota_token_window(tenant)),
            await redis.hgetall(quota_reservations(tenant)))


async def test_requests_per_minute_refuses_the_next_until_its_oldest_second_leaves(
        redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    for offset in (200, 10_500, 20_700):  # seconds T0, T0 + 10, T0 + 20
        assert (await _admit(scripts, tenant, T0 + offset, rpm=3)).charged
    before = await _snapshot(redis, tenant)
    refused = await _admit(scripts, tenant, T0 + 30_000, rpm=3)
    assert not refused.admitted
    # The request of second T0 stops counting at T0 + 60 s: 30 s from now.
    assert refused.refusals == (Refusal("requests_per_minute", 3, 3, 30_000),)
    for _ in range(5):
        assert not (await _admit(scripts, tenant, T0 + 30_000, rpm=3)).admitted
    assert await _snapshot(redis, tenant) == before  # refusals took nothing
    assert not (await _admit(scripts, tenant, T0 + 59_999, rpm=3)).admitted
    assert (await _admit(scripts, tenant, T0 + 60_000, rpm=3)).charged  # that second left
    again = await _admit(scripts, tenant, T0 + 60_100, rpm=3)
    assert again.refusals == (Refusal("requests_per_minute", 3, 3, 70_000 - 60_100),)


async def test_tokens_are_reserved_settled_to_the_real_use_and_refunded_without_a_final(
        redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    first, second = _scope(tenant), _scope(tenant)
    assert (await _admit(scripts, tenant, T0, scope=first, tpm=1000, tokens=600)).charged
    refused = await _admit(scripts, tenant, T0 + 5_000, tpm=1000, tokens=500)
    assert refused.refusals == (Refusal("tokens_per_minute", 1000, 600, 55_000),)
    # It used 150 of its 600: the other 450 are free at once.
    assert await scripts.settle(tenant, first, 150, now_ms=T0 + 6_000) == -450
    assert await scripts.settle(tenant, first, 150, now_ms=T0 + 6_000) is None  # once only
    assert (await _admit(scripts, tenant, T0 + 7_000, scope=second, tpm=1000,
                         tokens=850)).charged
    assert not (await _admit(scripts, tenant, T0 + 8_000, tpm=1000, tokens=1)).admitted
    # The second ends with no FINAL (cancelled): its whole reservation comes back.
    assert await scripts.release(tenant, second, now_ms=T0 + 9_000) == 1
    assert await redis.hgetall(quota_token_window(tenant)) == {str(T0 // 1000).encode(): b"150"}
    assert (await _admit(scripts, tenant, T0 + 9_000, tpm=1000, tokens=850)).charged


async def test_a_reservation_larger_than_the_limit_can_never_fit(redis: Redis,
                                                                 tenant: str) -> None:
    scripts = QuotaScripts(redis)
    refused = await _admit(scripts, tenant, T0, tpm=100, tokens=101)
    assert refused.refusals == (Refusal("tokens_per_minute", 100, 0, Refusal.NEVER),)
    assert await _snapshot(redis, tenant) == ([], {}, {}, {})


async def test_max_concurrent_counts_leases_and_a_refusal_takes_no_request(
        redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    held = [_scope(tenant) for _ in range(2)]
    for scope in held:
        assert (await _admit(scripts, tenant, T0, scope=scope, max_concurrent=2, rpm=10)).charged
    for _ in range(20):
        refused = await _admit(scripts, tenant, T0 + 1_000, max_concurrent=2, rpm=10)
        # Nothing has ended yet: when a slot frees is unknown.
        assert refused.refusals == (Refusal("max_concurrent", 2, 2, Refusal.UNKNOWN),)
    assert await redis.hgetall(quota_request_window(tenant)) == {str(T0 // 1000).encode(): b"2"}
    assert await scripts.release(tenant, held[0], now_ms=T0 + 4_000) == 1  # held 4 s
    assert (await _admit(scripts, tenant, T0 + 4_000, max_concurrent=2, rpm=10)).charged
    # Full again; the oldest lease (held[1], 5 s old) should end in 4 - 5 < 0 s: "any moment".
    refused = await _admit(scripts, tenant, T0 + 5_000, max_concurrent=2, rpm=10)
    assert refused.refusals == (Refusal("max_concurrent", 2, 2, 0),)
    assert await scripts.release(tenant, held[1], now_ms=T0 + 5_000) == 1  # held 5 s
    # Mean hold 4.1 s; the oldest lease now is 1 s old (admitted at T0 + 4 s).
    refused = await _admit(scripts, tenant, T0 + 5_000, max_concurrent=1)
    assert refused.refusals == (Refusal("max_concurrent", 1, 1, 3_100),)


async def test_every_limit_crossed_is_reported(redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    assert (await _admit(scripts, tenant, T0, max_concurrent=1, rpm=1, tpm=10,
                         tokens=10)).charged
    refused = await _admit(scripts, tenant, T0 + 1_000, max_concurrent=1, rpm=1, tpm=10,
                           tokens=10)
    assert [r.reason for r in refused.refusals] == [
        "max_concurrent", "requests_per_minute", "tokens_per_minute"]


async def test_a_lease_its_gateway_stopped_renewing_lapses(redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    live, crashed = _scope(tenant), _scope(tenant)
    for scope in (live, crashed):
        assert (await _admit(scripts, tenant, T0, scope=scope, max_concurrent=2,
                             ttl=1_000)).charged
        await redis.hset(request_claim(scope), mapping={"fingerprint": "f", "callers": 1})
    # The live gateway renews its lease; the crashed one's (callers still 1) is not renewed.
    assert await scripts.renew(tenant, [live], 1_000, now_ms=T0 + 600) == [True]
    assert not (await _admit(scripts, tenant, T0 + 999, max_concurrent=2)).admitted
    assert (await _admit(scripts, tenant, T0 + 1_001, max_concurrent=2)).charged
    assert await redis.zscore(quota_leases(tenant), crashed) is None
    assert await redis.zscore(quota_leases(tenant), live) == T0 + 1_600


async def test_callers_of_one_request_id_share_one_charge(redis: Redis, tenant: str) -> None:
    scripts = QuotaScripts(redis)
    scope = _scope(tenant)
    assert (await _admit(scripts, tenant, T0, scope=scope, max_concurrent=1, rpm=1)).charged
    # The request runs: its claim has a caller. A second caller under the same id is free
    # (the concurrency and the rate are both used up).
    await redis.hset(request_claim(scope), mapping={"fingerprint": "f", "callers": 2})
    second = await _admit(scripts, tenant, T0 + 10, scope=scope, max_concurrent=1, rpm=1)
    assert (second.admitted, second.charged) == (True, False)
    # The first caller leaves: the other one keeps the lease.
    await redis.hset(request_claim(scope), "callers", 1)
    assert await scripts.release(tenant, scope, now_ms=T0 + 20) == 0
    assert await redis.zscore(quota_leases(tenant), scope) is not None
    await redis.hset(request_claim(scope), "callers", 0)  # the last leaves: the lease ends
    assert await scripts.release(tenant, scope, now_ms=T0 + 30) == 1
    assert await redis.zcard(quota_leases(tenant)) == 0
    # Finished, its claim kept: a retry under the id reads the result and costs nothing.
    again = await _admit(scripts, tenant, T0 + 40, scope=scope, max_concurrent=1, rpm=1)
    assert (again.admitted, again.charged) == (True, False)
    assert await redis.hgetall(quota_request_window(tenant)) == {str(T0 // 1000).encode(): b"1"}


async def test_queued_job_items_are_counted_against_their_limit(redis: Redis,
                                                                tenant: str) -> None:
    scripts = QuotaScripts(redis)
    assert await scripts.reserve_job_items(tenant, 7, 10) == (True, 7)
    assert await scripts.reserve_job_items(tenant, 4, 10) == (False, 7)  # nothing added
    assert await scripts.reserve_job_items(tenant, 3, 10) == (True, 10)
    assert await scripts.release_job_items(tenant, 4) == 6
    assert await scripts.release_job_items(tenant, 100) == 0  # never below zero
    assert await scripts.reserve_job_items(tenant, 1000, 0) == (True, 1000)  # 0: no limit
