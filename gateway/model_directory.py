"""The gateway's view of the registry: a snapshot of every model's rollout (and, given a key
ring, of its API keys and tenant policies), refreshed in the background, and the choice of
version per request.

A registry that stops answering leaves the last good snapshot in place: requests keep being
routed by it, the outage is logged once, and its end once. Without any snapshot the gateway
cannot route, so start-up waits a bounded time for the first one and then fails.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fleet_common.errors import NotFound
from gateway.key_ring import KeyRing
from gateway.tenant_policies import TenantPolicies
from gateway.version_choice import LiveWorkerCounts, VersionChoice
from model_registry.reader import RegistryReader, RegistryUnavailable
from model_registry.records import AuthSnapshot, ServedModel, ServedRollout
from model_registry.routing import pick_version

log = logging.getLogger(__name__)

STARTUP_WAIT_S = 60.0
STARTUP_RETRY_S = 1.0


Snapshot = tuple[list[ServedRollout], AuthSnapshot | None]


class ModelDirectory:
    def __init__(self, reader: RegistryReader, refresh_s: float,
                 keys: KeyRing | None = None, policies: TenantPolicies | None = None) -> None:
        """With `keys`, every poll also reads the registry's API keys into it, and the tenants'
        policies into `policies` if given; a failed poll keeps the last good rollouts, keys and
        policies."""
        self._reader = reader
        self._refresh_s = refresh_s
        self._keys = keys
        self._policies = policies
        self._rollouts: dict[str, ServedRollout] = {}
        self._outage_since: float | None = None
        self._choice = VersionChoice()

    def load(self) -> None:
        """One read of the registry, blocking; on failure it raises and the snapshot stays."""
        self._install(self._read())

    async def load_at_start(self, wait_s: float = STARTUP_WAIT_S) -> None:
        """The first snapshot, retried while the registry is unavailable for up to `wait_s`;
        then RegistryUnavailable saying so. Other errors are raised at once."""
        deadline = time.monotonic() + wait_s
        attempts = 0
        while True:
            attempts += 1
            try:
                self._install(await asyncio.to_thread(self._read))
                return
            except RegistryUnavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RegistryUnavailable(
                        f"no registry snapshot after {wait_s:g} s ({attempts} attempts), and a "
                        f"gateway cannot route without one; last error: {exc}") from exc
                if attempts == 1:
                    log.warning("registry unavailable at start-up, retrying for up to %g s: %s",
                                wait_s, exc)
                await asyncio.sleep(min(STARTUP_RETRY_S, left))

    async def keep_fresh(self) -> None:
        """Reloads the registry every refresh interval so rollouts apply without a restart."""
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def refresh(self) -> bool:
        """One poll. True when the snapshot was replaced; False when the registry failed and the
        last good snapshot stays."""
        try:
            snapshot = await asyncio.to_thread(self._read)
        except Exception as exc:
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("registry refresh failed; serving the last good snapshot (%d models) "
                            "until it answers again: %s", len(self._rollouts), exc,
                            exc_info=not isinstance(exc, RegistryUnavailable))
            return False
        self._install(snapshot)
        if self._outage_since is not None:
            log.info("registry answers again after %.1f s; snapshot refreshed (%d models)",
                     time.monotonic() - self._outage_since, len(self._rollouts))
            self._outage_since = None
        return True

    @property
    def registry_outage(self) -> bool:
        """Whether the last poll failed (the snapshot may be stale)."""
        return self._outage_since is not None

    def _read(self) -> Snapshot:
        auth = self._reader.auth_snapshot() if self._keys is not None else None
        return self._reader.served_rollouts(), auth

    def _install(self, snapshot: Snapshot) -> None:
        rollouts, auth = snapshot
        self._rollouts = {r.state.model: r for r in rollouts}
        if auth is not None and self._keys is not None:
            self._keys.install(auth)
            if self._policies is not None:
                self._policies.install(auth.policies)

    def resolve(self, model: str, routing_key: str | None = None) -> ServedModel:
        return pick_version(self._rollout(model), routing_key)

    async def resolve_serving(self, model: str, routing_key: str | None,
                              workers: LiveWorkerCounts) -> ServedModel:
        """`resolve`, except that a candidate without a live worker leaves its request to the
        stable version when that has one (`gateway.version_choice`)."""
        rollout = self._rollout(model)
        return await self._choice.serving(rollout, pick_version(rollout, routing_key), workers)

    def _rollout(self, model: str) -> ServedRollout:
        rollout = self._rollouts.get(model)
        if rollout is None:
            known = ", ".join(sorted(self._rollouts)) or "none"
            raise NotFound(f"model {model!r} is not served here; served models: {known}")
        return rollout

    def all(self) -> list[ServedModel]:
        return [self._rollouts[name].stable for name in sorted(self._rollouts)]

    def rollouts(self) -> list[ServedRollout]:
        return [self._rollouts[name] for name in sorted(self._rollouts)]

    def all_served(self) -> list[ServedModel]:
        """Every version a request can be routed to: each model's stable and its candidate."""
        return [version for name in sorted(self._rollouts)
                for version in (self._rollouts[name].stable, self._rollouts[name].candidate)
                if version is not None]
