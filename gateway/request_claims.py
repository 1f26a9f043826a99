"""Request ids are idempotent within a tenant: the first caller claims the id, the same request
under it later (or at once) attaches to that generation, a different request is refused.

One Redis hash per request (`keys.request_claim`) holds the request's fingerprint, the attempt
now serving it and how many callers are attached; scripts make each decision atomic across any
number of gateways.
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from dataclasses import dataclass
from enum import Enum

from redis.asyncio import Redis

from fleet_common.keys import cancelled_flag, request_claim
from fleet_common.wire import GenerationTask

# While Redis keeps a scope's claim its attempt numbers are never reused, even after the claim
# is given up, so stale entries of an earlier run in the stream, the cancel flag or a queue can
# never pass for the new run's. A claim made where none was (a new id, or one whose claim Redis
# lost) starts again at attempt 1, so a cancel flag left from before is not this run's and goes
# (stale stream writers are fenced off by the workers' attempt markers). Each claim made gets
# an epoch of its own, so a caller of an earlier claim under the id cannot leave this one.
_CLAIM = """
local fingerprint = redis.call('HGET', KEYS[1], 'fingerprint')
if not fingerprint or fingerprint == '' then
  local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
  if attempt == 1 then
    redis.call('DEL', KEYS[2])
  end
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'attempt', attempt, 'callers', 1,
             'epoch', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {1, attempt, ARGV[3]}
end
if fingerprint ~= ARGV[1] then
  return {0, 0, ''}
end
redis.call('HINCRBY', KEYS[1], 'callers', 1)
return {2, tonumber(redis.call('HGET', KEYS[1], 'attempt')),
        redis.call('HGET', KEYS[1], 'epoch') or ''}
"""
# Moves the request to the next attempt unless another gateway already did; returns the
# attempt now current and whether this caller made it so (and must publish it).
_NEXT_ATTEMPT = """
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt'))
if not attempt then
  return {0, 0}
end
if attempt == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'attempt', attempt + 1)
  return {attempt + 1, 1}
end
return {attempt, 0}
"""
# A caller leaves; returns how many remain attached, or -1 when its claim is gone (Redis lost
# it, and the id may since have been claimed again under another epoch): then there is nothing
# of this caller's left to cancel. With `forget` and no one left the id is freed, so it can run
# afresh (when the request did not end with a result); its attempt count stays.
_LEAVE = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if redis.call('EXISTS', KEYS[1]) == 0 or (epoch and epoch ~= ARGV[2]) then
  return -1
end
local left = redis.call('HINCRBY', KEYS[1], 'callers', -1)
if left <= 0 and ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'fingerprint', '', 'callers', 0)
end
return left
"""


class ClaimKind(Enum):
    NEW = 1        # this caller runs the request (under `attempt`)
    ATTACHED = 2   # the same request is running or ran: read its stream
    CONFLICT = 0   # another request holds the id


@dataclass(frozen=True)
class Claim:
    kind: ClaimKind
    attempt: int
    epoch: str = ""  # names this claim of the id (not kept across a Redis loss)


def fingerprint(task: GenerationTask, *, caller_seed: int | None) -> str:
    """What makes two requests the same: model, exact prompt and stop ids, sampling as the
    caller asked (a seed the gateway chose is not the caller's), priority."""
    sampling = type(task.sampling)()
    sampling.CopyFrom(task.sampling)
    if caller_seed is None:
        sampling.ClearField("seed")
    digest = hashlib.sha256()
    for part in (task.model.encode(), array("I", task.prompt_token_ids).tobytes(),
                 array("I", task.stop_token_ids).tobytes(),
                 sampling.SerializeToString(deterministic=True), str(task.priority).encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class RequestClaims:
    def __init__(self, redis: Redis) -> None:
        self._claim = redis.register_script(_CLAIM)
        self._next_attempt = redis.register_script(_NEXT_ATTEMPT)
        self._leave = redis.register_script(_LEAVE)

    async def claim(self, scope: str, request_fingerprint: str, ttl_s: int) -> Claim:
        kind, attempt, epoch = await self._claim(
            keys=[request_claim(scope), cancelled_flag(scope)],
            args=[request_fingerprint, max(int(ttl_s), 1), uuid.uuid4().hex])
        return Claim(ClaimKind(int(kind)), int(attempt),
                     epoch.decode() if isinstance(epoch, bytes) else str(epoch))

    async def next_attempt(self, scope: str, current: int) -> tuple[int, bool]:
        """(the attempt now current, whether this caller advanced it and must publish it);
        attempt 0 when the claim is gone."""
        attempt, advanced = await self._next_attempt(keys=[request_claim(scope)], args=[current])
        return int(attempt), bool(advanced)

    async def leave(self, scope: str, epoch: str, *, forget: bool) -> int:
        """How many callers remain attached to the claim `epoch` names; -1 when it is gone."""
        return int(await self._leave(keys=[request_claim(scope)],
                                     args=["1" if forget else "0", epoch]))
