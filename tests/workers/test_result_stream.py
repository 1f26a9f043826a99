"""The worker's stream writer against a real Redis: order, expiry, errors, batching."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from fleet_common.keys import result_stream
from fleet_common.wire import EventKind, StreamEvent
from workers.result_stream import ResultStreamWriter

# A stuck Redis call fails its test in a minute instead of holding the whole run.
pytestmark = pytest.mark.timeout(60)


async def test_concurrent_requests_keep_their_own_order_and_expiry(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    writer = ResultStreamWriter(redis, ttl_s=120, max_len=1000)

    async def request(rid: str) -> None:
        await writer.write(rid, EventKind.STARTED, {"worker": "w"})
        for i in range(20):
            await writer.write(rid, EventKind.DELTA, {"i": i})
        await writer.write(rid, EventKind.FINAL, {"done": True})

    rids = [f"order-{n}" for n in range(10)]
    calls_before = (await redis.info("commandstats")).get("cmdstat_xadd", {}).get("calls", 0)
    await asyncio.gather(*(request(r) for r in rids))
    for rid in rids:
        events = [StreamEvent.from_fields(f) for _, f in await redis.xrange(result_stream(rid))]
        assert [e.kind for e in events] == [EventKind.STARTED] + [EventKind.DELTA] * 20 + [
            EventKind.FINAL]
        assert [e.data["i"] for e in events[1:-1]] == list(range(20))
        assert 0 < await redis.ttl(result_stream(rid)) <= 120
    stats = await redis.info("commandstats")
    assert stats["cmdstat_xadd"]["calls"] - calls_before == 10 * 22
    await redis.aclose()


async def test_a_failed_write_fails_only_its_own_writer(redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.set(result_stream("not-a-stream"), "a string, so XADD fails")
    writer = ResultStreamWriter(redis, ttl_s=60, max_len=100)
    bad, good = await asyncio.gather(
        writer.write("not-a-stream", EventKind.DELTA, {}),
        writer.write("fine", EventKind.DELTA, {}),
        return_exceptions=True)
    assert isinstance(bad, Exception) and "WRONGTYPE" in str(bad)
    assert good is None and await redis.xlen(result_stream("fine")) == 1
    with pytest.raises(Exception, match="WRONGTYPE"):
        await writer.write("not-a-stream", EventKind.DELTA, {})
    await redis.aclose()
