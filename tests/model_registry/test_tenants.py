"""Tenants and API keys in the registry database, on SQLite and PostgreSQL: create, list,
revoke, expire, and nothing but each key's sha256 stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from fleet_common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfBounds,
    Unauthenticated,
)
from model_registry.api_keys import INFERENCE, JOBS, OPERATOR, key_sha256
from model_registry.records import TenantPolicy
from model_registry.schema import Base
from model_registry.store import RegistryStore
from model_registry.tenants import MAX_LIMIT, TenantStore


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tenants(store: RegistryStore, clock: Clock) -> TenantStore:
    return TenantStore(store, clock)


def _dump(engine: Engine) -> str:
    """Every row of every registry table, as text."""
    with engine.connect() as db:
        return "\n".join(repr(tuple(row)) for table in Base.metadata.sorted_tables
                         for row in db.execute(select(table)))


def test_tenants_are_created_once_and_listed_by_name(tenants: TenantStore) -> None:
    tenants.create_tenant("globex", actor="ops/bootstrap")
    made = tenants.create_tenant("acme", "ACME Corp.", actor="ops/bootstrap")
    assert (made.name, made.display_name, made.created_by) == ("acme", "ACME Corp.",
                                                               "ops/bootstrap")
    assert [t.name for t in tenants.list_tenants()] == ["acme", "globex"]
    with pytest.raises(AlreadyExists, match="tenant 'acme' already exists"):
        tenants.create_tenant("acme")
    with pytest.raises(InvalidArgument, match=r"^name: must match .*, got 'Acme Corp'$"):
        tenants.create_tenant("Acme Corp")
    with pytest.raises(InvalidArgument, match="name: .*got 'a{64}'"):
        tenants.create_tenant("a" * 64)  # 63 at most: "<tenant>/<key>" fits an actor column
    with pytest.raises(OutOfBounds, match="display_name: must be at most 256 characters, got "
                                          "'257 characters'"):
        tenants.create_tenant("initech", "x" * 257)


def test_a_key_is_shown_once_and_authenticates_as_its_tenant_and_name(
        tenants: TenantStore, clock: Clock) -> None:
    tenants.create_tenant("acme")
    record, secret = tenants.create_key("acme", "ci", [OPERATOR, INFERENCE], actor="ops/alice")
    assert secret.startswith(f"clf_{record.key_id}_") and len(secret) == 4 + 16 + 1 + 64
    assert (record.tenant, record.name, record.scopes, record.created_by) == (
        "acme", "ci", (INFERENCE, OPERATOR), "ops/alice")
    assert (record.created_at, record.expires_at, record.revoked_at) == (clock.now, None, None)

    grant = tenants.authenticate(secret)
    assert (grant.key_id, grant.actor, grant.scopes) == (record.key_id, "acme/ci",
                                                         (INFERENCE, OPERATOR))
    assert grant.key_sha256 == key_sha256(secret)
    assert tenants.list_keys() == [record] == tenants.list_keys("acme")
    for wrong in (secret[:-1] + ("0" if secret[-1] != "0" else "1"), secret + "0", "", "ci"):
        with pytest.raises(Unauthenticated, match="unknown API key") as caught:
            tenants.authenticate(wrong)
        assert secret not in caught.value.message


def test_key_creation_refuses_bad_input_and_writes_nothing(tenants: TenantStore) -> None:
    tenants.create_tenant("acme")
    tenants.create_key("acme", "ci", [INFERENCE])
    cases = [
        (lambda: tenants.create_key("ghost", "ci", [INFERENCE]), NotFound,
         "tenant 'ghost' does not exist; tenants: acme"),
        (lambda: tenants.create_key("acme", "ci", [JOBS]), AlreadyExists,
         "tenant 'acme' already has a key named 'ci'"),
        (lambda: tenants.create_key("acme", "ci2", []), InvalidArgument,
         "scopes: at least one is required"),
        (lambda: tenants.create_key("acme", "ci2", ["admin"]), InvalidArgument,
         "scopes: unknown scope 'admin'; scopes: inference, jobs, operator"),
        (lambda: tenants.create_key("acme", "CI 2", [INFERENCE]), InvalidArgument, "name: "),
        (lambda: tenants.create_key("acme", "ci2", [INFERENCE], expires_in=timedelta(0)),
         OutOfBounds, "expires_in: must be positive and at most 3650 days, got '0s'"),
        (lambda: tenants.create_key("acme", "ci2", [INFERENCE],
                                    expires_in=timedelta(days=3651)),
         OutOfBounds, "expires_in: .*got '315446400s'"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert [k.name for k in tenants.list_keys()] == ["ci"]
    with pytest.raises(NotFound, match="tenant 'ghost' does not exist"):
        tenants.list_keys("ghost")


def test_a_revoked_key_is_refused_and_its_name_stays_taken(tenants: TenantStore,
                                                           clock: Clock) -> None:
    tenants.create_tenant("acme")
    record, secret = tenants.create_key("acme", "ci", [INFERENCE])
    kept, kept_secret = tenants.create_key("acme", "batch", [JOBS])
    clock.now += timedelta(minutes=5)
    revoked = tenants.revoke_key(record.key_id, actor="ops/alice")
    assert (revoked.revoked_at, revoked.revoked_by) == (clock.now, "ops/alice")
    with pytest.raises(Unauthenticated, match=rf"API key {record.key_id} \(acme/ci\) was "
                                              r"revoked at 2026-12-02T09:05:00\+00:00"):
        tenants.authenticate(secret)
    assert tenants.authenticate(kept_secret).actor == "acme/batch"
    clock.now += timedelta(minutes=5)
    assert tenants.revoke_key(secret) == revoked  # again, by the whole key: unchanged
    assert [g.key_id for g in tenants.auth_snapshot().grants] == [kept.key_id]
    with pytest.raises(AlreadyExists, match="names stay taken after revocation"):
        tenants.create_key("acme", "ci", [INFERENCE])
    with pytest.raises(NotFound, match="no API key has id '0123456789abcdef'"):
        tenants.revoke_key("0123456789abcdef")
    with pytest.raises(InvalidArgument, match="key_id: must be 16 lower-case hex digits"):
        tenants.revoke_key("acme/ci")


def test_a_key_expires(tenants: TenantStore, clock: Clock) -> None:
    tenants.create_tenant("acme")
    record, secret = tenants.create_key("acme", "trial", [INFERENCE],
                                        expires_in=timedelta(days=30))
    assert record.expires_at == clock.now + timedelta(days=30)
    clock.now += timedelta(days=30) - timedelta(seconds=1)
    assert tenants.authenticate(secret).expires_at == record.expires_at
    assert [g.key_id for g in tenants.auth_snapshot().grants] == [record.key_id]
    clock.now += timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match=rf"API key {record.key_id} \(acme/trial\) expired "
                                              r"at 2027-01-01T09:00:00\+00:00"):
        tenants.authenticate(secret)
    assert tenants.auth_snapshot().grants == ()
    assert tenants.list_keys()[0].revoked_at is None  # expired, not revoked


def test_the_snapshot_requires_keys_once_any_key_existed(tenants: TenantStore) -> None:
    assert not tenants.auth_snapshot().required
    tenants.create_tenant("acme")
    assert not tenants.auth_snapshot().required  # a tenant alone locks nobody out
    record, _ = tenants.create_key("acme", "ci", [INFERENCE])
    snapshot = tenants.auth_snapshot()
    assert snapshot.required and [(g.tenant, g.key_name) for g in snapshot.grants] == [
        ("acme", "ci")]
    tenants.revoke_key(record.key_id)
    snapshot = tenants.auth_snapshot()
    assert snapshot.required and snapshot.grants == ()  # revoking every key locks, not opens


def test_only_the_hash_of_a_key_is_stored(tenants: TenantStore, engine: Engine,
                                          database_url: str) -> None:
    tenants.create_tenant("acme")
    record, secret = tenants.create_key("acme", "ci", [INFERENCE])
    tenants.revoke_key(record.key_id)
    _, other = tenants.create_key("acme", "ci2", [INFERENCE, OPERATOR])
    dump = _dump(engine)
    for key in (secret, other):
        hidden = key.rsplit("_", 1)[1]
        assert key_sha256(key) in dump and hidden not in dump
    if database_url.startswith("sqlite:///"):  # the file and its write-ahead log, byte for byte
        path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert key_sha256(secret).encode() in raw
        assert secret.rsplit("_", 1)[1].encode() not in raw
        assert other.rsplit("_", 1)[1].encode() not in raw


def test_a_tenants_policy_is_stored_updated_and_in_the_snapshot(tenants: TenantStore,
                                                                engine: Engine) -> None:
    plain = tenants.create_tenant("globex")
    assert plain.policy == TenantPolicy("globex")  # no limits, weight 1, ceiling high
    made = tenants.create_tenant("acme", policy={"max_concurrent": 4, "tokens_per_minute": 9000,
                                                 "max_priority": "normal"})
    assert made.policy == TenantPolicy("acme", max_concurrent=4, tokens_per_minute=9000,
                                       max_priority="normal")
    updated = tenants.update_policy("acme", {"requests_per_minute": 120, "weight": 3,
                                             "max_concurrent": 0})
    expected = TenantPolicy("acme", requests_per_minute=120, tokens_per_minute=9000, weight=3,
                            max_priority="normal")
    assert updated.policy == expected
    # Read back from the database by a new store, as the registry would after a restart.
    again = TenantStore(RegistryStore(engine))
    assert [t.policy for t in again.list_tenants()] == [expected, TenantPolicy("globex")]
    assert again.auth_snapshot().policies == (expected, TenantPolicy("globex"))
    tenants.update_policy("acme", {"max_queued_job_items": MAX_LIMIT})
    assert again.list_tenants()[0].policy.max_queued_job_items == MAX_LIMIT  # type: ignore
    with pytest.raises(NotFound, match="tenant 'initech' does not exist"):
        tenants.update_policy("initech", {"weight": 2})


@pytest.mark.parametrize(("changes", "message"), [
    ({"max_concurrent": -1}, "policy.max_concurrent: must be 0 (no limit) to 2147483647, got -1"),
    ({"requests_per_minute": 2**31},
     "policy.requests_per_minute: must be 0 (no limit) to 2147483647, got 2147483648"),
    ({"tokens_per_minute": "many"},
     "policy.tokens_per_minute: must be 0 (no limit) to 2147483647, got 'many'"),
    ({"weight": 0}, "policy.weight: must be 1 to 1000, got 0"),
    ({"max_priority": "urgent"},
     "policy.max_priority: must be one of low, normal, high, got 'urgent'"),
    ({"burst": 5}, "policy.burst: unknown policy field; fields: max_concurrent, "),
])
def test_a_bad_policy_is_refused_naming_field_limit_and_value(
        tenants: TenantStore, changes: dict[str, object], message: str) -> None:
    tenants.create_tenant("acme")
    with pytest.raises(InvalidArgument) as caught:
        tenants.update_policy("acme", changes)  # type: ignore[arg-type]
    assert caught.value.message.startswith(message)
    with pytest.raises(InvalidArgument):
        tenants.create_tenant("globex", policy=changes)  # type: ignore[arg-type]
    assert [t.name for t in tenants.list_tenants()] == ["acme"]
    assert tenants.list_tenants()[0].policy == TenantPolicy("acme")
