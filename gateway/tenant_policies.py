"""Every tenant's policy (quotas, fair-share weight, priority ceiling) as a gateway last read it.

`gateway.model_directory` installs the policies of each auth snapshot it polls, beside the
keys (`gateway.key_ring`); while the registry is unreachable the last good ones stay. A tenant
the registry does not know (a FLEET_API_KEYS tenant, or the empty tenant when authentication
is off) has TenantPolicy's defaults: no limits, weight 1, any priority.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleet_common.errors import PermissionDenied
from model_registry.records import PRIORITY_NAMES, TenantPolicy


class TenantPolicies:
    def __init__(self, policies: Iterable[TenantPolicy] = ()) -> None:
        self._by_tenant: dict[str, TenantPolicy] = {}
        self.install(policies)

    def install(self, policies: Iterable[TenantPolicy]) -> None:
        self._by_tenant = {policy.tenant: policy for policy in policies}

    def of(self, tenant: str) -> TenantPolicy:
        policy = self._by_tenant.get(tenant)
        return policy if policy is not None else TenantPolicy(tenant=tenant)

    def weight(self, tenant: str) -> int:
        """The tenant's fair-share weight (what `Dispatcher(weight_of=...)` takes)."""
        return self.of(tenant).weight


def limited(policy: TenantPolicy) -> bool:
    """Whether any request quota applies to the tenant (else admission costs no Redis call)."""
    return bool(policy.max_concurrent or policy.requests_per_minute or policy.tokens_per_minute)


def priority_rank(name: str) -> int:
    """1 for "low" up to 3 for "high": the codellama.fleet.v1.Priority number of the name."""
    return PRIORITY_NAMES.index(name) + 1


def check_priority(policy: TenantPolicy, priority: int) -> None:
    """PermissionDenied when `priority` (a codellama.fleet.v1.Priority number, already
    validated) is above the tenant's ceiling. Refused rather than lowered: a caller that asked
    for HIGH and silently got LOW would see only slowness, and a batch client could not tell
    that its key is misconfigured (docs/tenants.md)."""
    ceiling = priority_rank(policy.max_priority)
    if priority > ceiling:
        asked = PRIORITY_NAMES[priority - 1]
        raise PermissionDenied(
            f"options.priority: tenant {policy.tenant!r} may ask for priority up to "
            f"PRIORITY_{policy.max_priority.upper()} (its max_priority is "
            f"{policy.max_priority!r}), got PRIORITY_{asked.upper()}; ask for "
            f"PRIORITY_{policy.max_priority.upper()} or lower, or ask an operator to raise it "
            "(fleet ops tenant-update --max-priority)")
