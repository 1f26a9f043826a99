"""Tenants, their policies, API keys and auth snapshots between their records and
RegistryService messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from codellama.fleet.v1 import generation_pb2
from codellama.fleet.v1 import registry_service_pb2 as pb
from fleet_common.errors import InvalidArgument
from model_registry.api_keys import INFERENCE, JOBS, OPERATOR
from model_registry.records import (
    ApiKeyRecord,
    AuthSnapshot,
    KeyGrant,
    TenantPolicy,
    TenantRecord,
)

SCOPE_PB: dict[str, int] = {INFERENCE: pb.API_KEY_SCOPE_INFERENCE, JOBS: pb.API_KEY_SCOPE_JOBS,
                            OPERATOR: pb.API_KEY_SCOPE_OPERATOR}
_SCOPE_NAMES = {number: name for name, number in SCOPE_PB.items()}
#: TenantPolicy.max_priority names <-> codellama.fleet.v1.Priority.
PRIORITY_PB: dict[str, int] = {"low": generation_pb2.PRIORITY_LOW,
                               "normal": generation_pb2.PRIORITY_NORMAL,
                               "high": generation_pb2.PRIORITY_HIGH}
_PRIORITY_NAMES = {number: name for name, number in PRIORITY_PB.items()}
_POLICY_FIELDS = tuple(f.name for f in fields(TenantPolicy) if f.name != "tenant")


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def scopes_from_pb(values: Iterable[int], field: str = "scopes") -> tuple[str, ...]:
    names = []
    for value in values:
        if value not in _SCOPE_NAMES:
            known = ", ".join(pb.ApiKeyScope.Name(n) for n in _SCOPE_NAMES)
            raise InvalidArgument(field, f"unknown scope {value}; scopes: {known}")
        names.append(_SCOPE_NAMES[value])
    return tuple(names)


def scopes_pb(scopes: Iterable[str]) -> list[int]:
    return [SCOPE_PB[s] for s in scopes]


def expires_in_from_pb(request: pb.CreateApiKeyRequest) -> timedelta | None:
    if not request.HasField("expires_in"):
        return None
    return request.expires_in.ToTimedelta()


def duration_pb(value: timedelta) -> Duration:
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def policy_pb(p: TenantPolicy) -> pb.TenantPolicy:
    return pb.TenantPolicy(
        tenant=p.tenant, max_concurrent=p.max_concurrent,
        requests_per_minute=p.requests_per_minute, tokens_per_minute=p.tokens_per_minute,
        max_queued_job_items=p.max_queued_job_items, weight=p.weight,
        max_priority=PRIORITY_PB[p.max_priority])


def policy_from_pb(message: pb.TenantPolicy) -> TenantPolicy:
    """A complete policy (a snapshot's); unset fields take the defaults."""
    return TenantPolicy(tenant=message.tenant, **policy_changes_from_pb(message))


def policy_changes_from_pb(message: pb.TenantPolicy,
                           field: str = "policy") -> dict[str, int | str]:
    """The fields set in `message`, as TenantStore takes them."""
    changes: dict[str, int | str] = {}
    for name in _POLICY_FIELDS:
        if not message.HasField(name):
            continue
        value = getattr(message, name)
        if name == "max_priority":
            if value not in _PRIORITY_NAMES:
                known = ", ".join(generation_pb2.Priority.Name(n) for n in _PRIORITY_NAMES)
                raise InvalidArgument(f"{field}.max_priority",
                                      f"must be one of {known}, got {value}")
            value = _PRIORITY_NAMES[value]
        changes[name] = value
    return changes


def tenant_pb(t: TenantRecord) -> pb.Tenant:
    return pb.Tenant(name=t.name, display_name=t.display_name, created_at=_ts(t.created_at),
                     created_by=t.created_by,
                     policy=policy_pb(t.policy) if t.policy is not None else None)


def api_key_pb(k: ApiKeyRecord) -> pb.ApiKey:
    return pb.ApiKey(key_id=k.key_id, tenant=k.tenant, name=k.name, scopes=scopes_pb(k.scopes),
                     created_at=_ts(k.created_at), created_by=k.created_by,
                     expires_at=_ts(k.expires_at), revoked_at=_ts(k.revoked_at),
                     revoked_by=k.revoked_by)


def auth_snapshot_pb(snapshot: AuthSnapshot) -> pb.GetAuthSnapshotResponse:
    return pb.GetAuthSnapshotResponse(
        grants=[pb.ApiKeyGrant(key_id=g.key_id, key_sha256=g.key_sha256, tenant=g.tenant,
                               key_name=g.key_name, scopes=scopes_pb(g.scopes),
                               expires_at=_ts(g.expires_at)) for g in snapshot.grants],
        authentication_required=snapshot.required,
        policies=[policy_pb(p) for p in snapshot.policies])


def auth_snapshot_from_pb(response: pb.GetAuthSnapshotResponse) -> AuthSnapshot:
    # A scope this reader does not know (a newer registry's) grants nothing here.
    return AuthSnapshot(
        grants=tuple(KeyGrant(
            key_id=g.key_id, key_sha256=g.key_sha256, tenant=g.tenant, key_name=g.key_name,
            scopes=tuple(_SCOPE_NAMES[s] for s in g.scopes if s in _SCOPE_NAMES),
            expires_at=_time(g.expires_at) if g.HasField("expires_at") else None)
            for g in response.grants),
        required=response.authentication_required,
        policies=tuple(_snapshot_policy(p) for p in response.policies))


def _snapshot_policy(message: pb.TenantPolicy) -> TenantPolicy:
    # A priority this reader does not know (a newer registry's) is read as the lowest ceiling.
    if message.HasField("max_priority") and message.max_priority not in _PRIORITY_NAMES:
        known = pb.TenantPolicy()
        known.CopyFrom(message)
        known.max_priority = generation_pb2.PRIORITY_LOW
        message = known
    return policy_from_pb(message)
