"""Tenants and API keys in the registry database: create, list, revoke, and check a presented key;
each tenant's policy (quotas, fair-share weight, priority ceiling), which gateways read with the
keys (`auth_snapshot`).

A key's secret exists only in what `create_key` returns; the database holds its sha256
(`model_registry.api_keys`). A key works from its creation until it is revoked or expires.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from fleet_common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfBounds,
    Unauthenticated,
)
from model_registry.api_keys import check_scopes, key_id_of, key_sha256, mint_key
from model_registry.records import (
    PRIORITY_NAMES,
    ApiKeyRecord,
    AuthSnapshot,
    KeyGrant,
    TenantPolicy,
    TenantRecord,
)
from model_registry.schema import ApiKey, Tenant
from model_registry.store import RegistryStore

# 63 characters each, so that "<tenant>/<key name>" fits the 128-character actor columns.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DISPLAY_NAME_CHARS = 256
MAX_EXPIRES_IN = timedelta(days=3650)
#: The policy's limits fit the database's 32-bit integer columns.
MAX_LIMIT = 2**31 - 1
MAX_WEIGHT = 1000
LIMITS = ("max_concurrent", "requests_per_minute", "tokens_per_minute", "max_queued_job_items")
POLICY_FIELDS = tuple(f.name for f in fields(TenantPolicy) if f.name != "tenant")
PolicyChanges = Mapping[str, int | str]


def _check_name(field: str, value: str) -> None:
    if not _NAME.match(value):
        raise InvalidArgument(field, f"must match {_NAME.pattern}, got {value!r}")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def check_policy(changes: PolicyChanges) -> None:
    """InvalidArgument (OutOfBounds) naming the first bad field (as `policy.<field>`), its bounds
    and its value."""
    for name, value in changes.items():
        field = f"policy.{name}"
        if name not in POLICY_FIELDS:
            raise InvalidArgument(field, f"unknown policy field; fields: {', '.join(POLICY_FIELDS)}")
        if name == "max_priority":
            if value not in PRIORITY_NAMES:
                raise OutOfBounds(field, value, f"one of {', '.join(PRIORITY_NAMES)}")
            continue
        low, high, what = ((1, MAX_WEIGHT, f"1 to {MAX_WEIGHT}") if name == "weight"
                           else (0, MAX_LIMIT, f"0 (no limit) to {MAX_LIMIT}"))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise OutOfBounds(field, value, what)


def tenant_policy(row: Tenant) -> TenantPolicy:
    return TenantPolicy(tenant=row.name, **{name: getattr(row, name) for name in POLICY_FIELDS})


def tenant_record(row: Tenant) -> TenantRecord:
    return TenantRecord(name=row.name, display_name=row.display_name, created_at=row.created_at,
                        created_by=row.created_by, policy=tenant_policy(row))


def _scopes(row: ApiKey) -> tuple[str, ...]:
    return tuple(row.scopes.split(","))


def key_record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=row.key_id, tenant=row.tenant.name, name=row.name,
                        scopes=_scopes(row), created_at=row.created_at,
                        created_by=row.created_by, expires_at=row.expires_at,
                        revoked_at=row.revoked_at, revoked_by=row.revoked_by)


def key_grant(row: ApiKey) -> KeyGrant:
    return KeyGrant(key_id=row.key_id, key_sha256=row.key_sha256, tenant=row.tenant.name,
                    key_name=row.name, scopes=_scopes(row), expires_at=row.expires_at)


class TenantStore:
    def __init__(self, store: RegistryStore, clock: Callable[[], datetime] = _utcnow) -> None:
        self._store = store
        self._clock = clock

    # Tenants -----------------------------------------------------------------------------------

    def create_tenant(self, name: str, display_name: str = "", actor: str = "",
                      policy: PolicyChanges | None = None) -> TenantRecord:
        """`policy`: the fields of TenantPolicy to set; the others take its defaults."""
        _check_name("name", name)
        if len(display_name) > _DISPLAY_NAME_CHARS:
            raise OutOfBounds("display_name", f"{len(display_name)} characters",
                              f"at most {_DISPLAY_NAME_CHARS} characters")
        check_policy(policy or {})
        settings = asdict(replace(TenantPolicy(tenant=name), **(policy or {})))
        del settings["tenant"]
        try:
            with self._store.transaction() as session:
                if session.scalar(select(Tenant.id).where(Tenant.name == name)) is not None:
                    raise AlreadyExists(f"tenant {name!r} already exists")
                row = Tenant(name=name, display_name=display_name, created_at=self._clock(),
                             created_by=actor, **settings)
                session.add(row)
                session.flush()
                return tenant_record(row)
        except IntegrityError as exc:
            raise AlreadyExists(f"tenant {name!r} already exists") from exc

    def list_tenants(self) -> list[TenantRecord]:
        with self._store.transaction() as session:
            return [tenant_record(row)
                    for row in session.scalars(select(Tenant).order_by(Tenant.name))]

    def update_policy(self, name: str, changes: PolicyChanges) -> TenantRecord:
        """Sets the given fields of the tenant's policy; the others stay."""
        check_policy(changes)
        with self._store.transaction() as session:
            row = self._tenant_row(session, name)
            for field, value in changes.items():
                setattr(row, field, value)
            session.flush()
            return tenant_record(row)

    @staticmethod
    def _tenant_row(session: Session, name: str) -> Tenant:
        row = session.scalars(select(Tenant).where(Tenant.name == name)).first()
        if row is None:
            known = ", ".join(sorted(session.scalars(select(Tenant.name)))) or "none"
            raise NotFound(f"tenant {name!r} does not exist; tenants: {known}")
        return row

    # Keys --------------------------------------------------------------------------------------

    def create_key(self, tenant: str, name: str, scopes: tuple[str, ...] | list[str], *,
                   expires_in: timedelta | None = None,
                   actor: str = "") -> tuple[ApiKeyRecord, str]:
        """A new key of `tenant`: its record and the whole key, which nothing else keeps."""
        _check_name("name", name)
        scopes = check_scopes(scopes)
        if expires_in is not None and not timedelta(0) < expires_in <= MAX_EXPIRES_IN:
            raise OutOfBounds("expires_in", f"{expires_in.total_seconds():.0f}s",
                              f"positive and at most {MAX_EXPIRES_IN.days} days")
        key_id, secret = mint_key()
        now = self._clock()
        taken = f"tenant {tenant!r} already has a key named {name!r} (names stay taken after " \
                "revocation: pick another)"
        try:
            with self._store.transaction() as session:
                owner = self._tenant_row(session, tenant)
                if session.scalar(select(ApiKey.id).where(ApiKey.tenant_id == owner.id,
                                                          ApiKey.name == name)) is not None:
                    raise AlreadyExists(taken)
                row = ApiKey(key_id=key_id, key_sha256=key_sha256(secret), tenant=owner,
                             name=name, scopes=",".join(scopes), created_at=now,
                             created_by=actor,
                             expires_at=now + expires_in if expires_in is not None else None,
                             revoked_at=None, revoked_by="")
                session.add(row)
                session.flush()
                return key_record(row), secret
        except IntegrityError as exc:
            raise AlreadyExists(taken) from exc

    def list_keys(self, tenant: str = "") -> list[ApiKeyRecord]:
        with self._store.transaction() as session:
            query = (select(ApiKey).join(ApiKey.tenant).options(joinedload(ApiKey.tenant))
                     .order_by(Tenant.name, ApiKey.id))
            if tenant:
                query = query.where(ApiKey.tenant_id == self._tenant_row(session, tenant).id)
            return [key_record(row) for row in session.scalars(query)]

    def revoke_key(self, key_id: str, actor: str = "") -> ApiKeyRecord:
        """Revokes the key (a revoked key is returned as it is)."""
        key_id = key_id_of(key_id)
        with self._store.transaction() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)
                                  .options(joinedload(ApiKey.tenant))).first()
            if row is None:
                raise NotFound(f"no API key has id {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = self._clock()
                row.revoked_by = actor
                session.flush()
            return key_record(row)

    # Checking keys -----------------------------------------------------------------------------

    def authenticate(self, key: str) -> KeyGrant:
        """The grant of a usable key; Unauthenticated saying why not (never echoing `key`)."""
        with self._store.transaction() as session:
            row = session.scalars(select(ApiKey).where(ApiKey.key_sha256 == key_sha256(key))
                                  .options(joinedload(ApiKey.tenant))).first()
            if row is None:
                raise Unauthenticated("unknown API key: send metadata 'authorization: Bearer "
                                      "<key>' with a key from `fleet ops key-create`")
            grant = key_grant(row)
            which = f"API key {grant.key_id} ({grant.actor})"
            if row.revoked_at is not None:
                raise Unauthenticated(f"{which} was revoked at {row.revoked_at.isoformat()}")
            if grant.expired(self._clock()):
                assert grant.expires_at is not None
                raise Unauthenticated(f"{which} expired at {grant.expires_at.isoformat()}")
            return grant

    def auth_snapshot(self) -> AuthSnapshot:
        """Every key neither revoked nor expired; `required` once any key was ever created;
        every tenant's policy."""
        now = self._clock()
        with self._store.transaction() as session:
            rows = session.scalars(select(ApiKey).where(ApiKey.revoked_at.is_(None))
                                   .options(joinedload(ApiKey.tenant)).order_by(ApiKey.id))
            grants = tuple(g for g in map(key_grant, rows) if not g.expired(now))
            required = bool(session.scalar(select(exists().where(ApiKey.id.isnot(None)))))
            policies = tuple(tenant_policy(row) for row in
                             session.scalars(select(Tenant).order_by(Tenant.name)))
            return AuthSnapshot(grants=grants, required=required, policies=policies)
