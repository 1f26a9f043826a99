"""UsageService: the stored usage (`model_registry.usage`) over gRPC. An operator key reads any
tenant's usage; any other valid key its own tenant's (so a tenant can check its bill with the
key it calls the gateway with)."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from codellama.fleet.v1 import usage_service_pb2 as pb
from codellama.fleet.v1 import usage_service_pb2_grpc as pb_grpc
from fleet_common.errors import InvalidArgument, PermissionDenied
from model_registry.access import RegistryAccess
from model_registry.api_keys import OPERATOR
from model_registry.records import KeyGrant
from model_registry.tenants import TenantStore
from model_registry.usage import UsageRow, UsageStore

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UsageService"].full_name
MAX_DAYS = 366


def parse_day(field: str, text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(field, f"must be a day as YYYY-MM-DD, got {text!r}") from None


def day_range(since: str, until: str, today: date) -> tuple[date, date]:
    """The days a request names; InvalidArgument naming the field that is wrong."""
    if not since:
        raise InvalidArgument("since", "is required: the first UTC day, as YYYY-MM-DD")
    first = parse_day("since", since)
    last = parse_day("until", until) if until else today
    if last < first:
        raise InvalidArgument("until", f"must not be before since ({first}), got {last}")
    if (last - first).days >= MAX_DAYS:
        raise InvalidArgument("until", f"must be less than {MAX_DAYS} days after since "
                                       f"({first}), got {last}; ask for a shorter range")
    return first, last


def tenant_to_read(grant: KeyGrant | None, asked: str) -> str | None:
    """The tenant whose usage the caller reads (None: every tenant)."""
    if grant is None or OPERATOR in grant.scopes:
        return asked or None
    if asked and asked != grant.tenant:
        raise PermissionDenied(f"UsageService.GetUsage: API key {grant.key_id} ({grant.actor}) "
                               f"may read only tenant {grant.tenant!r}'s usage; tenant "
                               f"{asked!r}'s needs scope {OPERATOR!r}")
    return grant.tenant


def record_pb(row: UsageRow) -> pb.UsageRecord:
    return pb.UsageRecord(day=row.day.isoformat(), tenant=row.tenant, model=row.model,
                          model_version=row.model_version, requests=row.requests,
                          prompt_tokens=row.prompt_tokens,
                          completion_tokens=row.completion_tokens, refusals=row.refusals)


class UsageServicer(pb_grpc.UsageServiceServicer):
    def __init__(self, usage: UsageStore, tenants: TenantStore, *,
                 authenticate: bool = True) -> None:
        self._usage = usage
        self._access = RegistryAccess(tenants, required=authenticate, service="UsageService")

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        grant = await self._access.caller(context.invocation_metadata(), "GetUsage", None)
        tenant = tenant_to_read(grant, request.tenant)
        since, until = day_range(request.since, request.until, datetime.now(UTC).date())
        rows = await asyncio.to_thread(self._usage.usage, tenant, since, until)
        return pb.GetUsageResponse(tenant=tenant or "", since=since.isoformat(),
                                   until=until.isoformat(), records=[record_pb(r) for r in rows])
