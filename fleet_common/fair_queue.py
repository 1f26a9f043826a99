"""Fair, prioritised waiting lines in front of each Celery queue.

A request waits in a list of its own tenant and priority, not in the Celery queue. What goes on
the Celery queue is a *ticket*: a fungible "take the next request" task, one per request. When a
worker thread is free it runs a ticket, and the take script chooses, at that moment, which
request runs:

- priorities are strict: any HIGH request goes before any NORMAL one, any NORMAL before LOW;
- within a priority, tenants share by start-time fair queuing (SFQ, Goyal, Vin and Cheng 1996):
  each tenant's head request gets the start tag max(V, F_tenant), the smallest tag runs, the
  tenant's finish tag becomes start + cost / weight and the virtual time V the start tag. The
  cost is the request's token budget (prompt tokens + max_tokens x n), so a tenant of long
  requests does not get more engine time than one of short ones; a tenant that was idle starts
  at V, with neither credit nor debt; a flood of one tenant queues behind its own tags only.

A worker may keep *reserve slots* (`FLEET_FAIR_SHARE_RESERVE`): once its open slots are full, a
free thread takes only a request of a tenant running fewer than its fair share of those slots
on this worker (the open slots split by weight among the tenants that wait or run there), and
otherwise holds its ticket and asks again shortly. A flood fills the open slots; a light
tenant's request that arrives behind it starts at once instead of waiting for one to free.

Tickets keep what Celery and autoscalers see true: the Celery queue's length is the number of
requests waiting, over every tenant and priority (Celery's own Redis priorities would split a
queue into several lists, and KEDA would have to sum them). Every ticket is the same, so a
ticket lost with a worker that held it is made good by any other (`top_up`).

Items are `b"<cost> <deadline unix>|" + GenerationTask bytes`; the take script drops items whose
deadline has passed. Keys are built inside the scripts from one prefix per Celery queue, which
a single Redis (or one Cluster hash slot, if the prefix were given a hash tag) allows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import quote

from redis.asyncio import Redis

from fleet_common.task_message import FAIR_TAKE_TASK
from fleet_common.wire import GenerationTask

__all__ = [
    "FAIR_TAKE_TASK",
    "HELD_BACK",
    "LEVELS",
    "FairTaker",
    "enqueue_args",
    "enqueue_keys",
    "item_of",
    "level_of",
    "task_of",
    "tenant_line",
    "waiting_count",
]
#: Priority level names, highest first, as the take script visits them.
LEVELS = ("high", "normal", "low")
_LEVEL_OF_PRIORITY = {3: "high", 2: "normal", 1: "low", 0: "normal"}


def level_of(priority: int) -> str:
    """The waiting line level of a `codellama.fleet.v1.Priority` value."""
    return _LEVEL_OF_PRIORITY.get(priority, "normal")


def prefix(queue: str) -> str:
    return f"fleet:fq:{queue}:"


def tenant_line(queue: str, level: str, tenant: str) -> str:
    """The list one tenant's requests of one priority wait in (LPUSH in, RPOP out)."""
    return f"{prefix(queue)}{level}:t:{quote(tenant, safe='')}"


def waiting_count(queue: str) -> str:
    """How many items wait in all of `queue`'s lines."""
    return f"{prefix(queue)}waiting"


def item_of(task: GenerationTask) -> bytes:
    cost = len(task.prompt_token_ids) + max(task.sampling.max_tokens, 1) * max(task.sampling.n, 1)
    return f"{cost} {int(task.deadline_unix) + 1}|".encode() + task.SerializeToString()


def task_of(item: bytes) -> GenerationTask:
    return GenerationTask.FromString(item[item.index(b"|") + 1:])


# KEYS: line, active set, weights, waiting, celery queue[, the request's claim]. ARGV: tenant,
# weight, item, ticket[, attempt]. The claim, if it exists, records `queued = attempt` in the
# same step, so a caller attached to the request can tell a queued attempt from one whose
# gateway died before queueing it (`gateway.leases`).
ENQUEUE = """
redis.call('LPUSH', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[4])
redis.call('LPUSH', KEYS[5], ARGV[4])
if KEYS[6] and redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('HSET', KEYS[6], 'queued', ARGV[5])
end
return 1
"""

# ARGV: prefix, now (unix s), open slots (0: take anything), then quoted tenant and running
# count pairs of this worker. With open slots given, only a tenant running fewer than its
# share of them is taken; `0` (not false) says requests wait but none of them may run here.
TAKE = """
local prefix, now, open_slots = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or '0')
local waiting, weights = prefix .. 'waiting', prefix .. 'weights'
local eligible = nil
if open_slots > 0 then
  local running, weight_of, total = {}, {}, 0
  for i = 4, #ARGV, 2 do running[ARGV[i]] = tonumber(ARGV[i + 1]) end
  local function count(tenant)
    if weight_of[tenant] == nil then
      weight_of[tenant] = math.max(tonumber(redis.call('HGET', weights, tenant) or '1'), 1)
      total = total + weight_of[tenant]
    end
  end
  for tenant, _ in pairs(running) do count(tenant) end
  for _, level in ipairs({'high', 'normal', 'low'}) do
    for _, tenant in ipairs(redis.call('SMEMBERS', prefix .. level .. ':active')) do
      count(tenant)
    end
  end
  eligible = {}
  for tenant, weight in pairs(weight_of) do
    eligible[tenant] = (running[tenant] or 0) < open_slots * weight / total
  end
end
local held_back = false
for _, level in ipairs({'high', 'normal', 'low'}) do
  local active = prefix .. level .. ':active'
  local finish = prefix .. level .. ':finish'
  local vtime_key = prefix .. level .. ':vtime'
  local tenants = redis.call('SMEMBERS', active)
  if #tenants > 0 then
    local v = tonumber(redis.call('GET', vtime_key) or '0')
    local best, best_start, best_finish, best_item, best_line
    for _, tenant in ipairs(tenants) do
      local line = prefix .. level .. ':t:' .. tenant
      local item = redis.call('LINDEX', line, -1)
      local dropped = 0
      while item do
        local deadline = tonumber(string.match(item, '^%d+ (%d+)|'))
        if deadline and deadline >= now then break end
        redis.call('RPOP', line)
        redis.call('DECR', waiting)
        dropped = dropped + 1
        if dropped >= 64 then item = nil break end
        item = redis.call('LINDEX', line, -1)
      end
      if not item then
        if redis.call('LLEN', line) == 0 then
          redis.call('SREM', active, tenant)
          redis.call('HDEL', finish, tenant)
        end
      elseif eligible ~= nil and not eligible[tenant] then
        held_back = true
      else
        local cost = tonumber(string.match(item, '^(%d+) '))
        local weight = tonumber(redis.call('HGET', weights, tenant) or '1')
        local start = math.max(v, tonumber(redis.call('HGET', finish, tenant) or '0'))
        local fin = start + cost / math.max(weight, 1)
        if best == nil or start < best_start or (start == best_start and
            (fin < best_finish or (fin == best_finish and tenant < best))) then
          best, best_start, best_finish, best_item, best_line = tenant, start, fin, item, line
        end
      end
    end
    if best then
      redis.call('RPOP', best_line)
      redis.call('DECR', waiting)
      redis.call('SET', vtime_key, tostring(best_start))
      if redis.call('LLEN', best_line) == 0 then
        redis.call('SREM', active, best)
      end
      redis.call('HSET', finish, best, tostring(best_finish))
      if redis.call('SCARD', active) == 0 then
        redis.call('DEL', finish, vtime_key)
      end
      return best_item
    end
  end
end
if held_back then return 0 end
return false
"""

# KEYS: waiting, celery queue. ARGV: ticket. Pushes one ticket if fewer wait than items do.
TOP_UP = """
local waiting = tonumber(redis.call('GET', KEYS[1]) or '0')
if waiting > redis.call('LLEN', KEYS[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


# ARGV: prefix. Returns the items waiting at each level, in LEVELS order.
DEPTHS = """
local prefix, depths = ARGV[1], {}
for i, level in ipairs({'high', 'normal', 'low'}) do
  local n = 0
  for _, tenant in ipairs(redis.call('SMEMBERS', prefix .. level .. ':active')) do
    n = n + redis.call('LLEN', prefix .. level .. ':t:' .. tenant)
  end
  depths[i] = n
end
return depths
"""


# ARGV: prefix. Returns [tenant, waiting, tenant, waiting, ...] over every level (tenants
# quoted, as the lines name them).
TENANT_DEPTHS = """
local prefix, counts, order = ARGV[1], {}, {}
for _, level in ipairs({'high', 'normal', 'low'}) do
  for _, tenant in ipairs(redis.call('SMEMBERS', prefix .. level .. ':active')) do
    local n = redis.call('LLEN', prefix .. level .. ':t:' .. tenant)
    if counts[tenant] == nil then counts[tenant] = 0; order[#order + 1] = tenant end
    counts[tenant] = counts[tenant] + n
  end
end
local out = {}
for _, tenant in ipairs(order) do out[#out + 1] = tenant; out[#out + 1] = counts[tenant] end
return out
"""


def enqueue_keys(queue: str, level: str, tenant: str, claim: str | None = None) -> list[str]:
    """`claim`: the request's claim hash (`keys.request_claim`), to record the queued attempt."""
    p = prefix(queue)
    keys = [tenant_line(queue, level, tenant), f"{p}{level}:active", f"{p}weights",
            waiting_count(queue), queue]
    return keys if claim is None else [*keys, claim]


def enqueue_args(tenant: str, weight: int, item: bytes, ticket: bytes, attempt: int = 0
                 ) -> list[bytes | str | int]:
    args: list[bytes | str | int] = [quote(tenant, safe=""), max(int(weight), 1), item, ticket]
    return [*args, attempt] if attempt else args


#: `FairTaker.take`'s answer when requests wait but none may take a reserve slot.
HELD_BACK = "held back"


class FairTaker:
    """A worker's side: takes the next request of its queue, in priority and fair order."""

    def __init__(self, redis: Redis, queue: str) -> None:
        self._take = redis.register_script(TAKE)
        self._prefix = prefix(queue)

    async def take(self, *, open_slots: int = 0, running: Mapping[str, int] | None = None
                   ) -> GenerationTask | str | None:
        """The next request; None when none waits. With `open_slots`, only a request of a
        tenant running (per `running`, by tenant) fewer than its share of them, or HELD_BACK."""
        args: list[str | int] = [self._prefix, int(time.time()), open_slots]
        for tenant, count in (running or {}).items():
            args += [quote(tenant, safe=""), count]
        item = await self._take(args=args)
        if item == 0:
            return HELD_BACK
        return None if item is None else task_of(item)
