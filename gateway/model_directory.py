"""The gateway's view of the registry: each model's rollout, refreshed in the background, and
the choice of version per request."""

from __future__ import annotations

import asyncio
import logging

from fleet_common.errors import NotFound
from model_registry.records import ServedModel, ServedRollout
from model_registry.routing import pick_version
from model_registry.store import RegistryStore

log = logging.getLogger(__name__)


class ModelDirectory:
    def __init__(self, store: RegistryStore, refresh_s: float) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._rollouts: dict[str, ServedRollout] = {}

    def load(self) -> None:
        self._rollouts = {r.state.model: r for r in self._store.served_rollouts()}

    async def keep_fresh(self) -> None:
        """Reloads the registry every refresh interval so rollouts apply without a restart."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                rollouts = await asyncio.to_thread(self._store.served_rollouts)
                self._rollouts = {r.state.model: r for r in rollouts}
            except Exception:
                log.warning("registry refresh failed; serving the last known rollouts",
                            exc_info=True)

    def resolve(self, model: str, routing_key: str | None = None) -> ServedModel:
        rollout = self._rollouts.get(model)
        if rollout is None:
            known = ", ".join(sorted(self._rollouts)) or "none"
            raise NotFound(f"model {model!r} is not served here; served models: {known}")
        return pick_version(rollout, routing_key)

    def all(self) -> list[ServedModel]:
        return [self._rollouts[name].stable for name in sorted(self._rollouts)]
