"""Which tenants hold this worker's slots, for the fair share of its reserve slots
(`fleet_common.fair_queue`, `FLEET_FAIR_SHARE_RESERVE`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any


class TenantSlots:
    """Requests running here by tenant. With a reserve, `choosing()` serializes the takes of
    this worker's threads, so two of them cannot both take the last open slot; without one,
    takes need no order and run at once."""

    def __init__(self, open_slots: int) -> None:
        """`open_slots`: slots open to every tenant; 0 when the worker keeps no reserve."""
        self._open_slots = open_slots
        self._running: Counter[str] = Counter()
        self._lock = asyncio.Lock()

    def choosing(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._lock if self._open_slots else contextlib.nullcontext()

    def limits(self) -> tuple[int, dict[str, int]]:
        """(open slots, running by tenant) for a take: (0, {}) while an open slot is free, so
        the take may choose any tenant."""
        if not self._open_slots or self._running.total() < self._open_slots:
            return 0, {}
        return self._open_slots, dict(self._running)

    def occupy(self, tenant: str) -> None:
        self._running[tenant] += 1

    def release(self, tenant: str) -> None:
        self._running[tenant] -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
