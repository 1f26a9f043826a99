"""Who may call the RegistryService: every call authenticates by its API key against the
database; reads need any scope, writes the `operator` scope (FLEET_REGISTRY_AUTH=off: anyone).

The actor a write records is the key's `<tenant>/<key name>`; only with authentication off is
it the caller's own word (the request's `actor`, else metadata `x-fleet-actor`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from fleet_common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from model_registry.api_keys import presented_key
from model_registry.records import KeyGrant
from model_registry.tenants import TenantStore

Metadata = Iterable[tuple[str, str | bytes]] | None
UNAUTHENTICATED_ACTOR = "unauthenticated"


class RegistryAccess:
    def __init__(self, tenants: TenantStore, *, required: bool = True,
                 service: str = "RegistryService") -> None:
        """`service`: the service whose calls it checks, as its messages name it."""
        self._tenants = tenants
        self._required = required
        self._service = service

    async def caller(self, metadata: Metadata, rpc: str, scope: str | None) -> KeyGrant | None:
        """The caller's key, allowed to call `rpc` (`scope` None: any scope will do); None
        when authentication is off."""
        if not self._required:
            return None
        key = presented_key(metadata)
        if not key:
            raise Unauthenticated(f"{self._service}.{rpc} needs an API key: send metadata "
                                  "'authorization: Bearer <key>' (fleet ops --api-key or "
                                  "FLEET_API_KEY)")
        grant = await asyncio.to_thread(self._tenants.authenticate, key)
        if scope is not None and scope not in grant.scopes:
            raise PermissionDenied(f"{self._service}.{rpc} needs scope {scope!r}; API key "
                                   f"{grant.key_id} ({grant.actor}) has scopes: "
                                   f"{', '.join(grant.scopes)}")
        return grant


def actor_of(grant: KeyGrant | None, declared: str, metadata: Metadata,
             field: str = "actor", *, required: bool = True) -> str:
    """Who makes a change: the authenticated key, else (authentication off) the declared one or
    metadata x-fleet-actor; else InvalidArgument naming `field`, or UNAUTHENTICATED_ACTOR when
    not `required`."""
    if grant is not None:
        return grant.actor
    if declared:
        return declared
    for name, value in metadata or ():
        if name == "x-fleet-actor" and isinstance(value, str) and value:
            return value
    if not required:
        return UNAUTHENTICATED_ACTOR
    raise InvalidArgument(field, "is required: say who makes the change (or send metadata "
                                 "x-fleet-actor)")
