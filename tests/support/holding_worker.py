"""A real worker process (`python -m workers`: registry, checksums, Celery, the fair take, result
streams, heartbeats) whose engine is the scripted fake of `tests.support.fake_engine`, holding
every request until a file exists, then answering it with a few tokens.

`python -m tests.support.holding_worker` with the worker's FLEET_* variables and
HOLDING_WORKER_RELEASE_FILE (see HoldingEngine). For tests about what happens around generation (quotas across
gateways), where a vLLM engine would cost half a minute to start and could not be held open.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import workers.__main__ as worker_main
from tests.support.fake_engine import FakeEngine, Script
from workers.engine import ChoiceUpdate, EngineRequest

RELEASE_FILE = "HOLDING_WORKER_RELEASE_FILE"


class HoldingEngine(FakeEngine):
    """Holds each request until the release file exists: an empty file releases every
    request, one holding a number N the first N the engine was given."""

    def __init__(self, release: Path) -> None:
        super().__init__(default=Script(tokens=2))
        self._release = release
        self._given = 0

    def _released(self, ordinal: int) -> bool:
        if not self._release.exists():
            return False
        text = self._release.read_text().strip()
        return not text or ordinal <= int(text)

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[ChoiceUpdate]]:
        if request.request_id != "warm-up":
            self._given += 1
            ordinal = self._given
            while not self._released(ordinal):
                await asyncio.sleep(0.02)
        async for update in super().generate(request):
            yield update


def main() -> None:
    release = Path(os.environ[RELEASE_FILE])
    worker_main.VllmEngine = lambda *_, **__: HoldingEngine(release)  # type: ignore[assignment]
    worker_main.main()


if __name__ == "__main__":
    main()
