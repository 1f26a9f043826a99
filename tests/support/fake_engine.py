"""A scripted stand-in for the worker's engine seam (`workers.engine.EngineClient`).

Each request yields one update of one token per choice per step, after `step_delay_s` of
`asyncio.sleep`, until `tokens` steps are done (the last update says FINISH_REASON_LENGTH) or the
script's `failure` is raised before step `fail_at_step`. Every request the engine got and every
abort is recorded, so tests can assert what the worker asked for and that it stopped the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from codellama.fleet.v1 import generation_pb2 as pb
from workers.engine import ChoiceUpdate, EngineRequest, EngineUnavailable

FIRST_TOKEN_ID = 1000


@dataclass(frozen=True)
class Script:
    """How the engine answers one request."""

    tokens: int = 3
    step_delay_s: float = 0.0
    fail_at_step: int | None = None
    failure: BaseException | None = None


@dataclass
class FakeEngine:
    default: Script = field(default_factory=Script)
    scripts: dict[str, Script] = field(default_factory=dict)  # by engine request id
    requests: list[EngineRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    steps: dict[str, int] = field(default_factory=dict)  # updates consumed, by engine request id
    running: set[str] = field(default_factory=set)
    dead: bool = False

    async def generate(self, request: EngineRequest) -> AsyncIterator[list[ChoiceUpdate]]:
        if self.dead:
            raise EngineUnavailable("the fake engine was shut down")
        self.requests.append(request)
        script = self.scripts.get(request.request_id, self.default)
        self.steps[request.request_id] = 0
        self.running.add(request.request_id)
        try:
            for step in range(script.tokens):
                await asyncio.sleep(script.step_delay_s)
                if request.request_id in self.aborted:
                    return
                if step == script.fail_at_step and script.failure is not None:
                    raise script.failure
                last = step == script.tokens - 1
                yield [ChoiceUpdate(
                    index=choice, text=f"<{step}>", token_ids=[FIRST_TOKEN_ID + step],
                    finish_reason=pb.FINISH_REASON_LENGTH if last else pb.FINISH_REASON_UNSPECIFIED)
                    for choice in range(max(request.sampling.n, 1))]
                self.steps[request.request_id] = step + 1
        finally:
            self.running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    def unfinished_requests(self) -> int:
        return len(self.running)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineUnavailable("the fake engine was shut down")

    def shutdown(self) -> None:
        self.dead = True

    async def wait_for_steps(self, request_id: str, steps: int, timeout_s: float = 5.0) -> None:
        """Returns once the consumer of `request_id` has handled `steps` updates."""
        async with asyncio.timeout(timeout_s):
            while self.steps.get(request_id, 0) < steps:
                await asyncio.sleep(0.002)
