"""Which version serves a request when the rollout picked a candidate that no live worker serves:
the stable version, if it has one, so the canary's share of users is not turned away.

The live-worker counts come from the dispatcher, whose cache of positive answers the request's
own submit then reuses: a pick that stands costs no extra Redis read. A candidate found dead is
not asked about again for `dead_for_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from model_registry.records import ServedModel, ServedRollout

log = logging.getLogger(__name__)


class LiveWorkerCounts(Protocol):
    """What the choice needs of the dispatcher (`gateway.dispatch.Dispatcher`)."""

    async def live_worker_count(self, queue: str) -> int: ...


class VersionChoice:
    def __init__(self, *, dead_for_s: float = 1.0, log_every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dead_for_s = dead_for_s
        self._log_every_s = log_every_s
        self._clock = clock
        self._dead_until: dict[str, float] = {}  # queue -> when to ask about it again
        self._logged_at: dict[str, float] = {}  # model -> when its fallback was last logged
        self._unlogged: dict[str, int] = {}  # model -> fallbacks since then

    async def serving(self, rollout: ServedRollout, picked: ServedModel,
                      workers: LiveWorkerCounts) -> ServedModel:
        """`picked`, unless it is the candidate, no worker of its queue is live and one of the
        stable version's is. With neither live, `picked`: its submit then says UNAVAILABLE."""
        candidate = rollout.candidate
        if candidate is None or picked.version != candidate.version:
            return picked
        if not await self._dead(candidate.queue, workers):
            return picked
        if await workers.live_worker_count(rollout.stable.queue) == 0:
            return picked
        self._note_fallback(rollout)
        return rollout.stable

    async def _dead(self, queue: str, workers: LiveWorkerCounts) -> bool:
        now = self._clock()
        if self._dead_until.get(queue, 0.0) > now:
            return True
        if await workers.live_worker_count(queue) > 0:
            self._dead_until.pop(queue, None)
            return False
        self._dead_until[queue] = now + self._dead_for_s
        return True

    def _note_fallback(self, rollout: ServedRollout) -> None:
        model = rollout.state.model
        self._unlogged[model] = self._unlogged.get(model, 0) + 1
        now = self._clock()
        last = self._logged_at.get(model)
        if last is not None and now - last < self._log_every_s:
            return
        candidate = rollout.candidate
        assert candidate is not None
        since = "" if last is None else f" in the last {now - last:.0f} s"
        log.warning("%s: candidate %s has no live worker (queue %s); %d request(s)%s served by "
                    "stable %s instead", model, candidate.version, candidate.queue,
                    self._unlogged[model], since, rollout.stable.version)
        self._logged_at[model] = now
        self._unlogged[model] = 0
