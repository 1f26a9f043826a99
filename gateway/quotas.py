"""Tenant quotas, enforced atomically across every gateway by Redis scripts
(`gateway.quota_scripts`): requests generating at once (`max_concurrent`), requests per minute
and tokens per minute, from each tenant's policy (`gateway.tenant_policies`).

One script call admits a request: it checks every limit and takes nothing unless all pass, so
a refused request consumes nothing. What an admitted request takes:

- a *lease* on one of the tenant's concurrent slots. It expires `lease_ttl_s` after it was
  taken or last renewed; each gateway renews the leases its callers wait on every third of that,
  so a crashed gateway's requests stop counting within `lease_ttl_s`, and a live one's never do;
- one request in the tenant's requests window (any 60 s, one-second resolution);
- prompt tokens + max_tokens x n in its tokens window: reserved at admission, settled to the
  real prompt + completion tokens when the FINAL arrives, refunded when the request ends
  without one (cancelled, failed, past its deadline).

The unit charged is the *generation*, named by its request scope (tenant + request id), not the
call: a caller that sends the same request id while a generation runs under it, or after it
finished (reading its stored result), attaches to it and is charged nothing, at any gateway;
the lease ends when the last caller attached to it leaves (`RequestClaims` counts them). A
caller refused by its claim (ALREADY_EXISTS) is likewise charged nothing. So no request is
charged twice, and a re-run after a lost worker is the same generation.

A refusal is `ResourceExhausted` with `reason` (the limit that holds the request back longest),
one `QuotaViolation` per limit crossed (limit, use) and `retry_after_s` from the algorithm: for
the windows, exactly when enough of the oldest seconds leave them; for concurrency, when the
oldest lease is expected to end (the tenant's mean lease time minus its age; 1 s while no lease
has ended yet). A request whose token reservation exceeds the whole tokens_per_minute can never
be admitted: no retry delay, and the message says to lower max_tokens or n.

Limits, on purpose:
- a tenant with no request limit (max_concurrent, requests_per_minute and tokens_per_minute all
  0) costs no Redis call; its requests admitted before a limit is set are not counted against
  it (they end within their deadline);
- a lease whose gateway could not renew it for `lease_ttl_s` (a Redis outage that long) lapses
  while its request may still run: the tenant can briefly exceed max_concurrent by those;
- a caller refused by its claim for a Redis error after the quota was taken leaves a lease that
  is never renewed (nobody is attached to it): it lapses within `lease_ttl_s`;
- the windows count a request's tokens in the second it was admitted: a request longer than
  60 s stops counting at 60 s, as if it had used its reservation at once.

Queued job items (`JobItemQuota`): a counter per tenant checked against
`max_queued_job_items`. Batch jobs do not exist yet; whatever queues job items must call
`reserve` before it queues them and `release` as each leaves the queue (started, cancelled,
expired). The counter has no expiry: it must be reconciled from the jobs' durable state if a
process can die between the two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from fleet_common.errors import QuotaViolation, ResourceExhausted, Unavailable
from fleet_common.keys import request_scope
from fleet_common.wire import Final, GenerationTask
from gateway.quota_scripts import WINDOW_S, QuotaScripts, Refusal
from gateway.tenant_policies import TenantPolicies, limited
from model_registry.records import TenantPolicy

log = logging.getLogger(__name__)
#: The retry delay of a concurrency refusal before any lease of the tenant has ended.
UNKNOWN_HOLD_RETRY_S = 1.0
#: The shortest retry delay given: a lease that outlived the mean ends "any moment".
MIN_RETRY_S = 0.05
#: Settling and releasing happen as a caller leaves; they must not hold it up longer.
LEAVE_TIMEOUT_S = 2.0


def reserved_tokens(task: GenerationTask) -> int:
    """What a request may use at most: prompt + max_tokens x n."""
    return len(task.prompt_token_ids) + max(task.sampling.max_tokens, 1) * max(task.sampling.n, 1)


@dataclass
class _Held:
    """A request scope this gateway has callers on (and renews the lease of)."""

    tenant: str
    callers: int
    since: float  # monotonic


def _describe(refusal: Refusal, task: GenerationTask, cost: int) -> str:
    if refusal.reason == "max_concurrent":
        return (f"max_concurrent: limit {refusal.limit}, {refusal.used} requests generating "
                "now")
    if refusal.reason == "requests_per_minute":
        return (f"requests_per_minute: limit {refusal.limit}, {refusal.used} requests admitted "
                f"in the last {WINDOW_S} s")
    return (f"tokens_per_minute: limit {refusal.limit}, {refusal.used} tokens used or reserved "
            f"in the last {WINDOW_S} s; this request reserves {cost} (prompt "
            f"{len(task.prompt_token_ids)} + max_tokens {task.sampling.max_tokens} x n "
            f"{max(task.sampling.n, 1)})")


def _retry_s(refusal: Refusal) -> float | None:
    if refusal.retry_ms == Refusal.NEVER:
        return None
    if refusal.retry_ms == Refusal.UNKNOWN:
        return UNKNOWN_HOLD_RETRY_S
    return max(refusal.retry_ms / 1000, MIN_RETRY_S)


def refusal_error(task: GenerationTask, refusals: tuple[Refusal, ...]) -> ResourceExhausted:
    """The error of a refused admission: every limit crossed, the one that binds longest."""
    cost = reserved_tokens(task)
    subject = f"tenant:{task.tenant}"
    violations = tuple(QuotaViolation(subject, _describe(r, task, cost)) for r in refusals)
    waits = [_retry_s(r) for r in refusals]
    never = [r for r, wait in zip(refusals, waits, strict=True) if wait is None]
    if never:
        return ResourceExhausted(
            f"tenant {task.tenant!r} can never be admitted this request: it reserves {cost} "
            f"tokens (prompt {len(task.prompt_token_ids)} + max_tokens "
            f"{task.sampling.max_tokens} x n {max(task.sampling.n, 1)}), more than its "
            f"tokens_per_minute of {never[0].limit}; lower sampling.max_tokens or n",
            reason=never[0].reason, violations=violations)
    retry, binding = max(((wait or 0.0, r) for wait, r in zip(waits, refusals, strict=True)),
                         key=lambda pair: pair[0])
    crossed = "; ".join(v.description for v in violations)
    return ResourceExhausted(f"tenant {task.tenant!r} is over its {binding.reason} quota "
                             f"({crossed}); retry in {retry:.2f} s",
                             retry_after_s=retry, reason=binding.reason, violations=violations)


class Quotas:
    """`admit` before a request is queued; `settle` on its FINAL; `leave` when its caller is
    done. `start` the renewal of leases, `aclose` it."""

    def __init__(self, redis: Redis, policies: TenantPolicies, *,
                 lease_ttl_s: float = 30.0) -> None:
        self._scripts = QuotaScripts(redis)
        self._policies = policies
        self._ttl_ms = max(int(lease_ttl_s * 1000), 1)
        self._held: dict[str, _Held] = {}
        self._renewal: asyncio.Task[None] | None = None

    def policy(self, tenant: str) -> TenantPolicy:
        return self._policies.of(tenant)

    async def admit(self, task: GenerationTask) -> None:
        """Takes the request's quota, or raises ResourceExhausted (nothing taken)."""
        policy = self._policies.of(task.tenant)
        if not limited(policy):
            return
        scope = request_scope(task.tenant, task.request_id)
        try:
            admission = await self._scripts.admit(
                task.tenant, scope, max_concurrent=policy.max_concurrent,
                requests_per_minute=policy.requests_per_minute,
                tokens_per_minute=policy.tokens_per_minute, tokens=reserved_tokens(task),
                lease_ttl_ms=self._ttl_ms)
        except (RedisError, OSError) as exc:
            raise Unavailable(f"queue backend unreachable while checking the quotas of tenant "
                              f"{task.tenant!r}: {type(exc).__name__}: {exc}") from exc
        if not admission.admitted:
            raise refusal_error(task, admission.refusals)
        held = self._held.get(scope)
        if held is None:
            self._held[scope] = _Held(task.tenant, 1, time.monotonic())
        else:
            held.callers += 1

    async def settle(self, task: GenerationTask, final: Final) -> None:
        """Charges the request its real tokens instead of its reservation (once, whichever of
        its callers gets here first)."""
        scope = request_scope(task.tenant, task.request_id)
        if scope not in self._held:
            return
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await self._scripts.settle(task.tenant, scope,
                                           final.prompt_tokens + final.completion_tokens)
        except (RedisError, OSError, TimeoutError):
            log.warning("request %s: could not settle its tokens (its reservation stays "
                        "charged)", scope, exc_info=True)

    async def leave(self, task: GenerationTask) -> None:
        """A caller is done (after it left its claim): the last one attached ends the lease and
        refunds a reservation never settled."""
        scope = request_scope(task.tenant, task.request_id)
        held = self._held.get(scope)
        if held is None:
            return
        held.callers -= 1
        if held.callers <= 0:
            del self._held[scope]
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await self._scripts.release(task.tenant, scope)
        except (RedisError, OSError, TimeoutError):
            log.warning("request %s: could not release its quota lease (it lapses within "
                        "%.0f s)", scope, self._ttl_ms / 1000, exc_info=True)

    async def renew(self) -> None:
        """Extends the leases of every request this gateway has callers on; forgets scopes
        whose caller never got as far as its claim (their leases lapse)."""
        by_tenant: dict[str, list[str]] = {}
        for scope, held in self._held.items():
            by_tenant.setdefault(held.tenant, []).append(scope)
        now = time.monotonic()
        for tenant, scopes in by_tenant.items():
            renewed = await self._scripts.renew(tenant, scopes, self._ttl_ms)
            for scope, ok in zip(scopes, renewed, strict=True):
                held = self._held.get(scope)
                if not ok and held is not None and now - held.since > self._ttl_ms / 1000:
                    del self._held[scope]

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            try:
                await self.renew()
            except (RedisError, OSError):
                log.warning("could not renew %d quota leases", len(self._held), exc_info=True)

    def start(self) -> None:
        self._renewal = asyncio.create_task(self.run_forever(), name="quota-leases")

    async def aclose(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.wait({self._renewal}, timeout=2.0)


class JobItemQuota:
    """`max_queued_job_items`: reserve before queueing job items, release as they leave."""

    def __init__(self, redis: Redis, policies: TenantPolicies) -> None:
        self._scripts = QuotaScripts(redis)
        self._policies = policies

    async def reserve(self, tenant: str, items: int) -> int:
        """Counts `items` more queued items of `tenant` (returns the count), or raises
        ResourceExhausted (nothing counted)."""
        limit = self._policies.of(tenant).max_queued_job_items
        ok, count = await self._scripts.reserve_job_items(tenant, items, limit)
        if not ok:
            description = (f"max_queued_job_items: limit {limit}, {count} job items queued; "
                           f"this job adds {items}")
            raise ResourceExhausted(
                f"tenant {tenant!r} is over its max_queued_job_items quota ({description}); "
                "submit again once some of its queued items have started",
                reason="max_queued_job_items",
                violations=(QuotaViolation(f"tenant:{tenant}", description),))
        return count

    async def release(self, tenant: str, items: int) -> int:
        return await self._scripts.release_job_items(tenant, items)
