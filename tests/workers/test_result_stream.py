"""The worker's stream writer against a real Redis: order, expiry, errors, batching."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from fleet_common.keys import result_stream
from codellama.fleet.v1 import generation_pb2 as pb
from fleet_common.wire import Delta, Final, Started, StreamEvent, event_from_fields
from workers.result_stream import ResultStreamWriter

# A stuck Redis call fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)


def _delta(i: int) -> StreamEvent:
    return StreamEvent(attempt=1, delta=Delta(choices=[pb.ChoiceDelta(token_ids=[i])]))


async def test_concurrent_requests_keep_their_own_order_and_expiry(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ResultStreamWriter(redis, ttl_s=120, max_len=1000)

    async def request(rid: str) -> None:
        await writer.write(rid, StreamEvent(attempt=1, started=Started(worker="w")))
        for i in range(20):
            await writer.write(rid, _delta(i))
        await writer.write(rid, StreamEvent(attempt=1, final=Final(completion_tokens=20)))

    rids = [f"order-{n}" for n in range(10)]
    calls_before = (await redis.info("commandstats")).get("cmdstat_xadd", {}).get("calls", 0)
    await asyncio.gather(*(request(r) for r in rids))
    for rid in rids:
        events = [event_from_fields(f) for _, f in await redis.xrange(result_stream(rid))]
        assert [e.WhichOneof("event") for e in events] == ["started"] + ["delta"] * 20 + [
            "final"]
        assert [e.delta.choices[0].token_ids[0] for e in events[1:-1]] == list(range(20))
        assert 0 < await redis.ttl(result_stream(rid)) <= 120
    stats = await redis.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] - calls_before == 10 * 22
    await redis.aclose()


async def test_a_failed_write_fails_only_its_own_writer(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.set(result_stream("not-a-stream"), "a string, so XADD fails")
    writer = ResultStreamWriter(redis, ttl_s=60, max_len=100)
    bad, good = await asyncio.gather(
        writer.write("not-a-stream", _delta(0)),
        writer.write("fine", _delta(0)),
        return_exceptions=True)
    assert isinstance(bad, Exception) and "WRONGTYPE" in str(bad)
    assert good is None and await redis.xlen(result_stream("fine")) == 1
    with pytest.raises(Exception, match="WRONGTYPE"):
        await writer.write("not-a-stream", _delta(0))
    await redis.aclose()
