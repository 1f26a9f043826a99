"""The worker's stream writer against a real Redis: order, expiry, errors, batching, fencing."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.keys import attempt_started, result_stream
from fleet_common.wire import Delta, Final, Started, StreamEvent, event_from_fields
from workers.result_stream import Fence, Fenced, ResultStreamWriter

# A stuck Redis call fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)


def _delta(i: int) -> StreamEvent:
    return StreamEvent(attempt=1, delta=Delta(choices=[pb.ChoiceDelta(token_ids=[i])]))


async def _fence(redis: Redis, scope: str, token: str = "w1 token") -> Fence:
    fence = Fence(attempt_started(scope, 1), token)
    await redis.set(fence.marker, token, ex=120)
    return fence


async def test_concurrent_requests_keep_their_own_order_and_expiry(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ResultStreamWriter(redis, ttl_s=120, max_len=1000)

    rids = [f"order-{n}" for n in range(10)]
    fences = {rid: await _fence(redis, rid) for rid in rids}

    async def request(rid: str) -> None:
        fence = fences[rid]
        await writer.write(rid, StreamEvent(attempt=1, started=Started(worker="w")), fence)
        for i in range(20):
            await writer.write(rid, _delta(i), fence)
        await writer.write(rid, StreamEvent(attempt=1, final=Final(completion_tokens=20)), fence)

    before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    await asyncio.gather(*(request(r) for r in rids))
    for rid in rids:
        events = [event_from_fields(f) for _, f in await redis.xrange(result_stream(rid))]
        assert [e.WhichOneof("event") for e in events] == ["started"] + ["delta"] * 20 + [
            "final"]
        assert [e.delta.choices[0].token_ids[0] for e in events[1:-1]] == list(range(20))
        assert 0 < await redis.ttl(result_stream(rid)) <= 120
    stats = await redis.info("commandstats")
    # One script call per event-loop turn carries every request's event of that turn.
    assert stats["cmdstat_evalsha"]["calls"] - before == 22
    await redis.aclose()


async def test_a_failed_write_fails_only_its_own_writer(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.set(result_stream("not-a-stream"), "a string, so XADD fails")
    bad_fence, good_fence = await _fence(redis, "not-a-stream"), await _fence(redis, "fine")
    writer = ResultStreamWriter(redis, ttl_s=60, max_len=100)
    bad, good = await asyncio.gather(
        writer.write("not-a-stream", _delta(0), bad_fence),
        writer.write("fine", _delta(0), good_fence),
        return_exceptions=True)
    assert isinstance(bad, Exception) and "WRONGTYPE" in str(bad)
    assert good is None and await redis.xlen(result_stream("fine")) == 1
    with pytest.raises(Exception, match="WRONGTYPE"):
        await writer.write("not-a-stream", _delta(0), bad_fence)
    await redis.aclose()


async def test_a_write_whose_marker_is_gone_or_another_runs_is_refused(redis_url: str) -> None:
    """What a run meets after Redis lost its keys (marker gone) and a re-run claimed the
    attempt again (marker now holds the re-run's token): nothing it writes lands."""
    redis = Redis.from_url(redis_url)
    writer = ResultStreamWriter(redis, ttl_s=60, max_len=100)
    old = await _fence(redis, "fenced", token="w1 old-run")
    await writer.write("fenced", _delta(0), old)
    await redis.delete(old.marker)
    with pytest.raises(Fenced):
        await writer.write("fenced", _delta(1), old)
    new = await _fence(redis, "fenced", token="w2 re-run")
    fenced_out, written = await asyncio.gather(
        writer.write("fenced", _delta(2), old), writer.write("fenced", _delta(3), new),
        return_exceptions=True)
    assert isinstance(fenced_out, Fenced) and written is None
    tokens = [event_from_fields(f).delta.choices[0].token_ids[0]
              for _, f in await redis.xrange(result_stream("fenced"))]
    assert tokens == [0, 3]
    await redis.aclose()


async def test_the_writer_reloads_its_script_after_redis_forgets_it(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ResultStreamWriter(redis, ttl_s=60, max_len=100)
    fence = await _fence(redis, "reloaded")
    await writer.write("reloaded", _delta(0), fence)
    await redis.script_flush()
    await writer.write("reloaded", _delta(1), fence)
    assert await redis.xlen(result_stream("reloaded")) == 2
    await redis.aclose()
