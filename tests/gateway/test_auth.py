"""API-key authentication: which tenant a call's metadata names, and which calls are refused:
FLEET_API_KEYS, and the registry's keys with their scopes, expiry and revocation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from fleet_common.errors import PermissionDenied, Unauthenticated
from gateway.auth import Authenticator
from gateway.key_ring import KeyRing
from model_registry.api_keys import INFERENCE, JOBS, OPERATOR, key_sha256
from model_registry.records import AuthSnapshot, KeyGrant

KEYS = {"key-acme-123": "acme", "key-globex-456": "globex"}


@dataclass
class _Context:
    """The part of a grpc.aio.ServicerContext the authenticator reads."""

    metadata: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata


def _tenant(auth: Authenticator, *metadata: tuple[str, str | bytes]) -> str:
    return auth.tenant_of(_Context(metadata))  # type: ignore[arg-type]


def test_without_keys_every_call_is_the_empty_tenant() -> None:
    auth = Authenticator({})
    assert _tenant(auth) == ""
    assert _tenant(auth, ("authorization", "Bearer anything")) == ""


@pytest.mark.parametrize(("key", "tenant"), KEYS.items())
def test_a_known_bearer_key_names_its_tenant(key: str, tenant: str) -> None:
    auth = Authenticator(KEYS)
    assert _tenant(auth, ("user-agent", "grpc-python"), ("authorization", f"Bearer {key}")) \
        == tenant


@pytest.mark.parametrize("metadata", [
    (),
    (("authorization", "Bearer wrong-key"),),
    (("authorization", "Bearer "),),
    (("authorization", "Bearer key-acme-12"),),  # a prefix of a key is no key
    (("x-api-key", "key-acme-123"),),
    (("authorization", b"Bearer key-acme-123"),),  # binary metadata is not a bearer token
], ids=["none", "wrong", "empty", "prefix", "other-header", "bytes"])
def test_a_missing_or_unknown_key_is_unauthenticated(
        metadata: tuple[tuple[str, str | bytes], ...]) -> None:
    with pytest.raises(Unauthenticated, match="authorization: Bearer <key>"):
        _tenant(Authenticator(KEYS), *metadata)


def test_the_message_does_not_echo_the_presented_key() -> None:
    with pytest.raises(Unauthenticated) as caught:
        _tenant(Authenticator(KEYS), ("authorization", "Bearer secret-guess"))
    assert "secret-guess" not in caught.value.message


# Keys from the registry (a KeyRing filled by the registry poll) ------------------------------

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
ACME_CI = "clf_00112233445566aa_" + "ab" * 32
ACME_JOBS = "clf_00112233445566bb_" + "cd" * 32


def _grant(key: str, name: str, *scopes: str, expires_at: datetime | None = None) -> KeyGrant:
    return KeyGrant(key_id=key.split("_")[1], key_sha256=key_sha256(key), tenant="acme",
                    key_name=name, scopes=scopes, expires_at=expires_at)


def _ring(*grants: KeyGrant, required: bool = True) -> KeyRing:
    return KeyRing(AuthSnapshot(grants=grants, required=required))


def _bearer(key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {key}")


def test_a_registry_key_names_its_tenant_when_it_has_the_scope() -> None:
    auth = Authenticator({}, _ring(_grant(ACME_CI, "ci", INFERENCE), _grant(ACME_JOBS, "batch",
                                                                            JOBS)))
    assert _tenant(auth, _bearer(ACME_CI)) == "acme"
    grant = auth.grant_of(_Context((_bearer(ACME_JOBS),)), JOBS)  # type: ignore[arg-type]
    assert grant is not None and grant.actor == "acme/batch"
    with pytest.raises(PermissionDenied, match=r"API key 00112233445566bb \(acme/batch\) lacks "
                                               r"scope 'inference', .* it has: jobs"):
        _tenant(auth, _bearer(ACME_JOBS))


def test_a_registry_key_past_its_expiry_is_unauthenticated() -> None:
    clock = {"now": NOW}
    ring = _ring(_grant(ACME_CI, "ci", INFERENCE, expires_at=NOW + timedelta(hours=1)))
    auth = Authenticator({}, ring, clock=lambda: clock["now"])
    assert _tenant(auth, _bearer(ACME_CI)) == "acme"
    clock["now"] = NOW + timedelta(hours=1)
    with pytest.raises(Unauthenticated, match=r"API key 00112233445566aa \(acme/ci\) expired at "
                                              r"2026-12-02T10:00:00\+00:00"):
        _tenant(auth, _bearer(ACME_CI))


def test_a_key_the_registry_no_longer_lists_is_refused_at_once() -> None:
    ring = _ring(_grant(ACME_CI, "ci", INFERENCE))
    auth = Authenticator({}, ring)
    assert _tenant(auth, _bearer(ACME_CI)) == "acme"
    ring.install(AuthSnapshot(grants=(), required=True))  # revoked: the next poll drops it
    with pytest.raises(Unauthenticated, match="unknown or revoked API key") as caught:
        _tenant(auth, _bearer(ACME_CI))
    assert ACME_CI not in caught.value.message
    with pytest.raises(Unauthenticated, match="missing API key"):
        _tenant(auth)


def test_fleet_api_keys_keep_working_beside_registry_keys_with_every_scope() -> None:
    auth = Authenticator(KEYS, _ring(_grant(ACME_CI, "ci", INFERENCE)))
    assert _tenant(auth, _bearer("key-globex-456")) == "globex"
    assert _tenant(auth, _bearer(ACME_CI)) == "acme"
    for scope in (INFERENCE, JOBS, OPERATOR):
        grant = auth.grant_of(_Context((_bearer("key-acme-123"),)), scope)  # type: ignore
        assert grant is not None and grant.tenant == "acme"
    # FLEET_API_KEYS alone turns authentication on, as before the registry had keys.
    with pytest.raises(Unauthenticated):
        _tenant(Authenticator(KEYS, _ring(required=False)))


def test_authentication_turns_on_with_the_registry_s_first_key_and_stays_on() -> None:
    ring = _ring(required=False)
    auth = Authenticator({}, ring)
    assert _tenant(auth) == ""  # a fleet without any key: open, as before
    ring.install(AuthSnapshot(grants=(_grant(ACME_CI, "ci", INFERENCE),), required=True))
    with pytest.raises(Unauthenticated, match="authorization: Bearer <key>"):
        _tenant(auth)
    ring.install(AuthSnapshot(grants=(), required=True))  # every key revoked: locked, not open
    with pytest.raises(Unauthenticated):
        _tenant(auth, _bearer(ACME_CI))
