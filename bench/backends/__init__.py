"""The backends, each behind `Backend`: start, run_request, close.

`run_request(prompt, output_len)` sends one greedy request for exactly `output_len` tokens
(EOS ignored) and returns its `RequestRecord`; it never raises for a failed request.
"""

from __future__ import annotations

from typing import Any, Protocol

from bench.records import RequestRecord
from bench.workload import Prompt


class Backend(Protocol):
    name: str

    async def start(self) -> None:
        """Connect (and for vLLM alone: build the engine)."""

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        """Check the backend sees the prompts as the workload defines them."""

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        """One streamed request; timings measured on the client side."""

    async def close(self) -> None: ...


def make_backend(name: str, target: dict[str, Any]) -> Backend:
    """The client of backend `name`; `target` says where it is (runner plan)."""
    if name == "vllm":
        from bench.backends.vllm_engine import VllmEngineBackend

        return VllmEngineBackend(**target)
    if name == "vllm-server":
        from bench.backends.vllm_server import VllmServerBackend

        return VllmServerBackend(**target)
    if name in ("fleet", "fleet-traced"):
        from bench.backends.fleet import FleetBackend

        return FleetBackend(**target)
    if name == "vllm-grpc":
        from bench.backends.vllm_grpc import VllmGrpcBackend

        return VllmGrpcBackend(**target)
    if name == "smg":
        from bench.backends.smg_router import SmgRouterBackend

        return SmgRouterBackend(**target)
    raise ValueError(f"unknown backend {name!r}")
