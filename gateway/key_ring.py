"""The registry's usable API keys as a gateway last read them, found by their sha256.

`gateway.model_directory` installs each snapshot it polls; while the registry is unreachable the
last good one stays, so a key revoked during an outage works until the registry answers again.
"""

from __future__ import annotations

from model_registry.records import AuthSnapshot, KeyGrant


class KeyRing:
    def __init__(self, snapshot: AuthSnapshot | None = None) -> None:
        self._by_hash: dict[str, KeyGrant] = {}
        self._required = False
        if snapshot is not None:
            self.install(snapshot)

    def install(self, snapshot: AuthSnapshot) -> None:
        self._by_hash = {grant.key_sha256: grant for grant in snapshot.grants}
        self._required = snapshot.required

    @property
    def required(self) -> bool:
        """Whether the registry has keys, so that a call without one is refused."""
        return self._required

    def find(self, key_sha256: str) -> KeyGrant | None:
        return self._by_hash.get(key_sha256)
