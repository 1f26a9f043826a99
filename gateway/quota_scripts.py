"""The Redis scripts behind tenant quotas (`gateway.quotas`), and a thin typed wrapper per script.

Each script is one atomic step over one tenant's keys (`fleet_common.keys.quota_*`), so any
number of gateways share the limits exactly. Times are Redis's own clock (`TIME`), so gateway
clocks do not matter; tests pass `now_ms` instead.

- A *lease* per request generating: member = the request scope, in `leases` (scored by expiry,
  renewed by the gateways whose callers wait on it) and `lease-starts` (scored by admission).
- The *windows* of requests and tokens: one hash field per unix second, summed over the last 60
  seconds. Usage admitted in second s stops counting at s + 60, so a refusal's retry delay is
  exactly when enough of the oldest seconds leave the window.
- A *reservation* per request (`reservations`: scope -> "<second> <tokens>"): the tokens charged
  at admission, corrected to the real count by `settle`, refunded by `release` if never settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from fleet_common.keys import (
    queued_job_items,
    quota_lease_starts,
    quota_leases,
    quota_request_window,
    quota_reservations,
    quota_stats,
    quota_token_window,
    request_claim,
)

WINDOW_S = 60
#: Weight of each finished lease in the mean time a lease is held.
HOLD_EWMA_WEIGHT = 0.1

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local second = math.floor(now / 1000)
"""

_WINDOWS = """
-- The usage counted in a window hash, its seconds oldest first; drops seconds that left it.
local function window(key)
  local raw = redis.call('HGETALL', key)
  local used, seconds, stale = 0, {}, {}
  for i = 1, #raw, 2 do
    local s, n = tonumber(raw[i]), tonumber(raw[i + 1])
    if s <= second - WINDOW then
      stale[#stale + 1] = raw[i]
    else
      used = used + n
      seconds[#seconds + 1] = {s, n}
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  table.sort(seconds, function(a, b) return a[1] < b[1] end)
  return used, seconds
end

-- Milliseconds until used + need fits limit as the oldest seconds leave; -1: never.
local function frees_in(seconds, used, need, limit)
  local excess = used + need - limit
  for _, s in ipairs(seconds) do
    excess = excess - s[2]
    if excess <= 0 then
      return (s[1] + WINDOW) * 1000 - now
    end
  end
  return -1
end

-- Adds delta to the tokens of second s if s is still in the window (never below 0); a delta
-- for a second that has left it changes nothing, except that tokens used beyond a reservation
-- are charged to the current second.
local function adjust(key, s, delta)
  if s > second - WINDOW then
    local current = tonumber(redis.call('HGET', key, s) or '0')
    if current + delta > 0 then
      redis.call('HSET', key, s, current + delta)
    else
      redis.call('HDEL', key, s)
    end
  elseif delta > 0 then
    redis.call('HINCRBY', key, second, delta)
  end
  redis.call('PEXPIRE', key, (WINDOW + 1) * 1000)
end
"""

_PRELUDE = f"local WINDOW = {WINDOW_S}\n" + _NOW + _WINDOWS

# KEYS: leases, lease starts, reservations, request window, token window, stats, the request's
# claim. ARGV: now ms or '', scope, max_concurrent, requests_per_minute, tokens_per_minute,
# tokens to reserve, lease ttl ms (limits: 0 = none).
# Returns {1} admitted and charged; {2} admitted free (a generation under this id is running,
# finished or held by another request: this caller attaches to it or is refused by its claim);
# {0, {reason, limit, used, retry ms (-1 never, -2 unknown)}, ...} refused, nothing taken.
ADMIT = _PRELUDE + """
local scope = ARGV[2]
local max_concurrent, rpm, tpm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cost, ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
if redis.call('ZSCORE', KEYS[1], scope) then
  return {2}
end
local fingerprint = redis.call('HGET', KEYS[7], 'fingerprint')
if fingerprint and fingerprint ~= '' then
  return {2}
end
local refusals = {}
local running = redis.call('ZCARD', KEYS[1])
if max_concurrent > 0 and running >= max_concurrent then
  -- A slot frees when the oldest lease ends: expected after the mean time a lease is held.
  local retry = -2
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local mean = tonumber(redis.call('HGET', KEYS[6], 'lease_ms') or '')
  if mean and oldest[2] then
    retry = math.max(math.floor(mean - (now - tonumber(oldest[2]))), 0)
  end
  refusals[#refusals + 1] = {'max_concurrent', max_concurrent, running, retry}
end
local requests, request_seconds = window(KEYS[4])
if rpm > 0 and requests + 1 > rpm then
  refusals[#refusals + 1] = {'requests_per_minute', rpm, requests,
                             frees_in(request_seconds, requests, 1, rpm)}
end
local tokens, token_seconds = window(KEYS[5])
if tpm > 0 and tokens + cost > tpm then
  refusals[#refusals + 1] = {'tokens_per_minute', tpm, tokens,
                             frees_in(token_seconds, tokens, cost, tpm)}
end
if #refusals > 0 then
  return {0, unpack(refusals)}
end
redis.call('ZADD', KEYS[1], now + ttl, scope)
redis.call('ZADD', KEYS[2], now, scope)
redis.call('HSET', KEYS[3], scope, second .. ' ' .. cost)
redis.call('HINCRBY', KEYS[4], second, 1)
redis.call('HINCRBY', KEYS[5], second, cost)
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], ttl + 1000)
end
redis.call('PEXPIRE', KEYS[4], (WINDOW + 1) * 1000)
redis.call('PEXPIRE', KEYS[5], (WINDOW + 1) * 1000)
return {1}
"""

# KEYS: reservations, token window. ARGV: now ms or '', scope, tokens used.
# Returns the correction made (used - reserved), or nil when nothing was reserved (another
# caller of the request settled it first, or it was never charged).
SETTLE = _PRELUDE + """
local held = redis.call('HGET', KEYS[1], ARGV[2])
if not held then
  return nil
end
redis.call('HDEL', KEYS[1], ARGV[2])
local s, reserved = string.match(held, '(%d+) (%d+)')
local delta = tonumber(ARGV[3]) - tonumber(reserved)
if delta ~= 0 then
  adjust(KEYS[2], tonumber(s), delta)
end
return delta
"""

# KEYS: leases, lease starts, reservations, token window, stats, the request's claim.
# ARGV: now ms or '', scope. Ends the request's lease unless a caller is still attached to it
# (the last one to leave ends it); refunds a reservation never settled. Returns 1 if it ended
# the lease, 0 if callers remain, -1 if there was no lease.
RELEASE = _PRELUDE + """
local scope = ARGV[2]
if tonumber(redis.call('HGET', KEYS[6], 'callers') or '0') > 0 then
  return 0
end
local started = redis.call('ZSCORE', KEYS[2], scope)
local leased = redis.call('ZREM', KEYS[1], scope)
redis.call('ZREM', KEYS[2], scope)
if started then
  local held_ms = now - tonumber(started)
  local mean = tonumber(redis.call('HGET', KEYS[5], 'lease_ms') or '')
  if mean then
    mean = mean + """ + str(HOLD_EWMA_WEIGHT) + """ * (held_ms - mean)
  else
    mean = held_ms
  end
  redis.call('HSET', KEYS[5], 'lease_ms', math.floor(mean))
  redis.call('PEXPIRE', KEYS[5], 86400000)
end
local held = redis.call('HGET', KEYS[3], scope)
if held then
  redis.call('HDEL', KEYS[3], scope)
  local s, reserved = string.match(held, '(%d+) (%d+)')
  adjust(KEYS[4], tonumber(s), -tonumber(reserved))
end
if leased == 1 then
  return 1
end
return -1
"""

# KEYS: leases, lease starts, reservations, then one claim per scope. ARGV: now ms or '', ttl
# ms, then the scopes. Extends each scope's lease that exists while a caller is attached to
# its claim; returns 1 or 0 per scope.
RENEW = _NOW + """
local ttl = tonumber(ARGV[2])
local renewed, any = {}, false
for i = 3, #ARGV do
  local scope = ARGV[i]
  local callers = tonumber(redis.call('HGET', KEYS[i + 1], 'callers') or '0')
  if callers > 0 and redis.call('ZSCORE', KEYS[1], scope) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, scope)
    renewed[#renewed + 1] = 1
    any = true
  else
    renewed[#renewed + 1] = 0
  end
end
if any then
  for k = 1, 3 do
    if redis.call('EXISTS', KEYS[k]) == 1 then
      redis.call('PEXPIRE', KEYS[k], ttl + 1000)
    end
  end
end
return renewed
"""

# KEYS: the tenant's queued job item counter. ARGV: items to add, the limit (0 = none).
# Returns {1, count after} or {0, count now} (refused, nothing added).
RESERVE_JOB_ITEMS = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if limit > 0 and count + n > limit then
  return {0, count}
end
return {1, redis.call('INCRBY', KEYS[1], n)}
"""

# KEYS: the counter. ARGV: items that left the queue. Never below 0; returns the count.
RELEASE_JOB_ITEMS = """
local count = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[1]), 0)
redis.call('SET', KEYS[1], count)
return count
"""


@dataclass(frozen=True)
class Refusal:
    """One limit an admission crossed."""

    reason: str  # the TenantPolicy field: max_concurrent, requests_per_minute, ...
    limit: int
    used: int  # requests generating, or requests / tokens in the last 60 s
    retry_ms: int  # -1: never fits; -2: unknown (nothing has finished yet)

    NEVER = -1
    UNKNOWN = -2


@dataclass(frozen=True)
class Admission:
    admitted: bool
    charged: bool  # False: free (the request id already has a generation)
    refusals: tuple[Refusal, ...] = ()


def _now(now_ms: int | None) -> str:
    return "" if now_ms is None else str(int(now_ms))


class QuotaScripts:
    """The scripts, registered once on a client (redis-py loads each with EVALSHA)."""

    def __init__(self, redis: Redis) -> None:
        self._admit = redis.register_script(ADMIT)
        self._settle = redis.register_script(SETTLE)
        self._release = redis.register_script(RELEASE)
        self._renew = redis.register_script(RENEW)
        self._reserve_items = redis.register_script(RESERVE_JOB_ITEMS)
        self._release_items = redis.register_script(RELEASE_JOB_ITEMS)

    async def admit(self, tenant: str, scope: str, *, max_concurrent: int,
                    requests_per_minute: int, tokens_per_minute: int, tokens: int,
                    lease_ttl_ms: int, now_ms: int | None = None) -> Admission:
        reply = await self._admit(
            keys=[quota_leases(tenant), quota_lease_starts(tenant), quota_reservations(tenant),
                  quota_request_window(tenant), quota_token_window(tenant), quota_stats(tenant),
                  request_claim(scope)],
            args=[_now(now_ms), scope, max_concurrent, requests_per_minute, tokens_per_minute,
                  tokens, lease_ttl_ms])
        status = int(reply[0])
        if status:
            return Admission(True, status == 1)
        return Admission(False, False, tuple(
            Refusal(r[0].decode() if isinstance(r[0], bytes) else r[0], int(r[1]), int(r[2]),
                    int(r[3])) for r in reply[1:]))

    async def settle(self, tenant: str, scope: str, tokens: int,
                     now_ms: int | None = None) -> int | None:
        """The correction made to the reservation (tokens - reserved); None if none was held."""
        delta = await self._settle(keys=[quota_reservations(tenant), quota_token_window(tenant)],
                                   args=[_now(now_ms), scope, tokens])
        return None if delta is None else int(delta)

    async def release(self, tenant: str, scope: str, now_ms: int | None = None) -> int:
        return int(await self._release(
            keys=[quota_leases(tenant), quota_lease_starts(tenant), quota_reservations(tenant),
                  quota_token_window(tenant), quota_stats(tenant), request_claim(scope)],
            args=[_now(now_ms), scope]))

    async def renew(self, tenant: str, scopes: list[str], lease_ttl_ms: int,
                    now_ms: int | None = None) -> list[bool]:
        reply = await self._renew(
            keys=[quota_leases(tenant), quota_lease_starts(tenant), quota_reservations(tenant),
                  *(request_claim(scope) for scope in scopes)],
            args=[_now(now_ms), lease_ttl_ms, *scopes])
        return [bool(int(r)) for r in reply]

    async def reserve_job_items(self, tenant: str, items: int, limit: int) -> tuple[bool, int]:
        ok, count = await self._reserve_items(keys=[queued_job_items(tenant)],
                                              args=[items, limit])
        return bool(int(ok)), int(count)

    async def release_job_items(self, tenant: str, items: int) -> int:
        return int(await self._release_items(keys=[queued_job_items(tenant)], args=[items]))
