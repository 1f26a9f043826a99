"""API-key authentication: `authorization: Bearer <key>` metadata -> tenant, with a scope check.

A key is found by its sha256 (`model_registry.api_keys` explains why neither a slow hash nor a
constant-time comparison is needed) among the registry's keys (`gateway.key_ring`, refreshed
with every registry poll) and the FLEET_API_KEYS entries, which have every scope and no expiry.
Calls are refused without a valid key as soon as FLEET_API_KEYS is set or the registry has any
key; before that (a fleet with neither) every call is the empty tenant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import grpc

from fleet_common.errors import PermissionDenied, Unauthenticated
from gateway.key_ring import KeyRing
from model_registry.api_keys import INFERENCE, SCOPES, key_sha256, presented_key
from model_registry.records import KeyGrant

STATIC_KEY_NAME = "FLEET_API_KEYS"
_SEND = "send metadata 'authorization: Bearer <key>'"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Authenticator:
    def __init__(self, api_keys: Mapping[str, str], registry_keys: KeyRing | None = None, *,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        """`api_keys`: FLEET_API_KEYS, key -> tenant. `registry_keys`: the registry's keys."""
        self._static = {
            key_sha256(key): KeyGrant(key_id="", key_sha256=key_sha256(key), tenant=tenant,
                                      key_name=STATIC_KEY_NAME, scopes=SCOPES)
            for key, tenant in api_keys.items()}
        self._registry = registry_keys if registry_keys is not None else KeyRing()
        self._clock = clock

    def tenant_of(self, context: grpc.aio.ServicerContext, scope: str = INFERENCE) -> str:
        """The caller's tenant, if its key has `scope`; "" when authentication is off."""
        grant = self.grant_of(context, scope)
        return grant.tenant if grant is not None else ""

    def grant_of(self, context: grpc.aio.ServicerContext, scope: str) -> KeyGrant | None:
        """The caller's key, if it has `scope`; None when authentication is off."""
        if not self._static and not self._registry.required:
            return None
        presented = presented_key(context.invocation_metadata())
        if not presented:
            raise Unauthenticated(f"missing API key: {_SEND}")
        digest = key_sha256(presented)
        grant = self._static.get(digest) or self._registry.find(digest)
        if grant is None:
            raise Unauthenticated(f"unknown or revoked API key: {_SEND} with a valid key")
        which = f"API key {grant.key_id} ({grant.actor})" if grant.key_id else \
            f"the {STATIC_KEY_NAME} key of tenant {grant.tenant!r}"
        if grant.expired(self._clock()):
            assert grant.expires_at is not None
            raise Unauthenticated(f"{which} expired at {grant.expires_at.isoformat()}; ask an "
                                  "operator for a new key")
        if scope not in grant.scopes:
            raise PermissionDenied(f"{which} lacks scope {scope!r}, which this call needs; it "
                                   f"has: {', '.join(grant.scopes)}")
        return grant
