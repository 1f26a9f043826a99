"""API-key authentication: `authorization: Bearer <key>` metadata -> tenant name."""

from __future__ import annotations

import hmac

import grpc

from fleet_common.errors import Unauthenticated


class Authenticator:
    def __init__(self, api_keys: dict[str, str]) -> None:
        self._keys = dict(api_keys)

    def tenant_of(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant; "" when authentication is off."""
        if not self._keys:
            return ""
        presented = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str):
                presented = value.removeprefix("Bearer ").strip()
        for known, tenant in self._keys.items():
            if presented and hmac.compare_digest(presented, known):
                return tenant
        raise Unauthenticated("missing or unknown API key: send metadata "
                              "'authorization: Bearer <key>'")
