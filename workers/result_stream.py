"""Writes requests' events to their Redis Streams, where the gateway (or a later watcher) reads.

Writes from all in-flight requests that arrive in the same event-loop turn go to Redis in one
script call: at 32 concurrent requests an engine step yields 32 deltas, and sending them one by
one would cost 32 round trips per step.

Every write is fenced. The worker that starts an attempt sets the attempt's marker
(`keys.attempt_started`) to a token of its own, and a write lands only while the marker still
holds that token. Redis can lose its keys (a restart without persistence, a failover to a
replica behind), and the gateway then re-runs the request, possibly under the same attempt
number; the old run's writer, reconnected, would otherwise append its tokens to the new run's
stream, duplicating text while the request reports OK. A fenced writer hears `Fenced` and stops.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from fleet_common.keys import result_stream
from fleet_common.wire import EVENT_FIELD, StreamEvent

# KEYS: per event, its stream and its attempt's marker. ARGV: max length, expiry (s), event
# field, then per event: the writer's token, the event, whether to refresh the expiry (1/0).
# Returns per event 1 (written), 0 (fenced: the marker is gone or another run's) or the error.
_FENCED_XADD = """
local out = {}
for i = 1, #KEYS, 2 do
  local j = 4 + (i - 1) / 2 * 3
  if redis.call('GET', KEYS[i + 1]) ~= ARGV[j] then
    out[#out + 1] = 0
  else
    local added = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', ARGV[1], '*', ARGV[3], ARGV[j + 1])
    if type(added) == 'table' and added.err then
      out[#out + 1] = added.err
    else
      if ARGV[j + 2] == '1' then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
      out[#out + 1] = 1
    end
  end
end
return out
"""


class Fenced(Exception):
    """The attempt's marker no longer holds this run's token: another run owns the request's
    stream now (or Redis lost it), and this run must stop without writing."""


@dataclass(frozen=True)
class Fence:
    """The marker key an attempt's writes are checked against, and this run's token in it."""

    marker: str
    token: str


@dataclass
class _Pending:
    stream: str
    fence: Fence
    event: bytes
    refresh_expiry: bool
    written: asyncio.Future[None]


class ResultStreamWriter:
    def __init__(self, redis: Redis, *, ttl_s: int, max_len: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_len = max_len
        self._script = redis.register_script(_FENCED_XADD)
        self._pending: list[_Pending] = []

    async def write(self, scope: str, event: StreamEvent, fence: Fence) -> None:
        """Returns once the event is in Redis; raises Fenced when the run no longer owns the
        stream. Events of one request keep their order because each request awaits its
        previous write before making the next."""
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(lambda: asyncio.ensure_future(self._flush()))
        self._pending.append(_Pending(result_stream(scope), fence, event.SerializeToString(),
                                      not event.HasField("delta"), written))
        await asyncio.shield(written)

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        keys: list[str] = []
        args: list[bytes | str | int] = [self._max_len, self._ttl_s, EVENT_FIELD]
        for item in batch:
            keys += [item.stream, item.fence.marker]
            args += [item.fence.token, item.event, 1 if item.refresh_expiry else 0]
        try:
            replies = await self._run(keys, args)
        except Exception as exc:  # noqa: BLE001 - a lost connection: every writer hears it
            for item in batch:
                item.written.set_exception(exc)
            return
        for item, reply in zip(batch, replies, strict=True):
            if reply == 1:
                item.written.set_result(None)
            elif reply == 0:
                item.written.set_exception(Fenced(
                    f"{item.fence.marker} no longer holds this run's token"))
            else:
                item.written.set_exception(ResponseError(
                    reply.decode() if isinstance(reply, bytes) else str(reply)))

    async def _run(self, keys: list[str], args: list[bytes | str | int]) -> list[object]:
        """EVALSHA in one round trip; EVAL (which caches the script again) when Redis has lost
        its script cache, as a restarted Redis has."""
        try:
            return await self._redis.evalsha(self._script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._redis.eval(_FENCED_XADD, len(keys), *keys, *args)
