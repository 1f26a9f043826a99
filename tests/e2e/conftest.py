"""The session's fleet: three vLLM workers in three pools, a gateway, and vLLM-alone answers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.prompts import EnginePrompt, PromptBuilder, PromptInput
from gateway.settings import Limits
from model_registry.store import ServedModel
from prompting.modes import Mode
from tests.e2e.fleet_harness import Fleet, new_fleet
from tests.support.redis_server import throwaway_redis
from tests.support.vllm_reference import run_reference

CONTEXT_LIMIT = 2048
CHAT_7B = "tiny-7b-instruct"      # infill layout, Llama 2 chat, pool 7b, TP 1
BASE_34B = "tiny-34b"             # plain layout, pool 34b, TP 2
CHAT_70B = "tiny-70b-instruct"    # 70B layout, "Source:" chat, pool 70b (TP 1 here)
UNSERVED = "tiny-unserved"        # registered, no worker
SPARE = "tiny-7b-spare"           # its worker is started and stopped by one test
CANARY = "tiny-canary"            # v1 and v2 (different weights), one worker each


@dataclass(frozen=True)
class Message:
    """Stands in for a ChatMessage proto when building prompts outside the gateway."""

    role: int
    content: str
    destination: str = ""


def _register_models(fleet: Fleet, checkpoints: dict[str, Path]) -> None:
    fleet.register(CHAT_7B, checkpoints["infill"], variant="codellama-7b-instruct",
                   context_limit=CONTEXT_LIMIT)
    fleet.register(BASE_34B, checkpoints["plain"], variant="codellama-34b",
                   context_limit=CONTEXT_LIMIT)
    fleet.register(CHAT_70B, checkpoints["70b"], variant="codellama-70b-instruct",
                   tensor_parallel_size=1, context_limit=CONTEXT_LIMIT)
    fleet.register(UNSERVED, checkpoints["infill"], variant="codellama-7b",
                   context_limit=CONTEXT_LIMIT)
    fleet.register(SPARE, checkpoints["infill"], variant="codellama-7b",
                   context_limit=CONTEXT_LIMIT)
    for version, layout in (("v1", "infill"), ("v2", "infill-seed1")):
        fleet.register(CANARY, checkpoints[layout], version=version, variant="codellama-7b",
                       context_limit=CONTEXT_LIMIT)


def engine_prompt(fleet_or_store: Any, model: str, prompt_input: PromptInput) -> EnginePrompt:
    served: ServedModel = fleet_or_store.get_version(model)
    return PromptBuilder(Limits()).build(served, prompt_input)


# Requests whose vLLM-alone answers the truth tests compare against: name -> (model, input,
# max_tokens). Greedy, one at a time, on a fresh engine.
def reference_cases() -> dict[str, tuple[str, PromptInput, int]]:
    from codellama.fleet.v1 import generation_pb2 as pb

    return {
        "completion": (CHAT_7B, PromptInput(Mode.COMPLETION,
                                            prompt="def fibonacci(n):\n    \"\"\""), 24),
        "chat": (CHAT_7B, PromptInput(Mode.CHAT, messages=(
            Message(pb.ROLE_SYSTEM, "Answer with code only."),
            Message(pb.ROLE_USER, "Write a function that reverses a string."),
        )), 24),
        "infill": (CHAT_7B, PromptInput(Mode.INFILL, prefix="def add(a, b):\n    ",
                                        suffix="\n    return result\n"), 48),
        "completion_34b": (BASE_34B, PromptInput(Mode.COMPLETION, prompt="import os\n"), 24),
        "chat_70b": (CHAT_70B, PromptInput(Mode.CHAT, messages=(
            Message(pb.ROLE_USER, "Write a function that sorts a list."),
        )), 64),
    }


@pytest.fixture(scope="package")
def fleet_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with throwaway_redis(tmp_path_factory) as url:
        yield url


# Package scope: the engines stop once the end-to-end tests are done, so the tests after them
# do not share two cores and the memory with five idle vLLM engines.
@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory, fleet_redis_url: str,
          tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    fleet = new_fleet(tmp_path_factory.mktemp("fleet"), fleet_redis_url)
    _register_models(fleet, tiny_checkpoints)
    try:
        fleet.spawn_worker("w-7b", CHAT_7B)
        fleet.spawn_worker("w-34b-tp2", BASE_34B, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
        fleet.spawn_worker("w-70b", CHAT_70B)
        fleet.spawn_worker("w-canary-v1", CANARY, version="v1")
        fleet.spawn_worker("w-canary-v2", CANARY, version="v2")
        for name, model, version in (
                ("w-7b", CHAT_7B, None), ("w-34b-tp2", BASE_34B, None), ("w-70b", CHAT_70B, None),
                ("w-canary-v1", CANARY, "v1"), ("w-canary-v2", CANARY, "v2")):
            fleet.wait_for_worker(name, model, version)
        fleet.start_gateway()
        yield fleet
    finally:
        fleet.stop()


class References:
    """Answers of vLLM alone, computed in the background; `get` waits for them."""

    def __init__(self, runs: dict[str, tuple[Future[dict[str, Any]], int]]) -> None:
        self._runs = runs

    def get(self, name: str) -> dict[str, Any]:
        run, index = self._runs[name]
        return run.result()["results"][index]

    def wait_all(self) -> None:
        """Until no reference engine runs: a test that times the fleet must not share the
        box's two cores with them."""
        for run, _ in self._runs.values():
            run.result()


@pytest.fixture(scope="package")
def references(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]
               ) -> Iterator[References]:
    """vLLM alone, in its own process, started before the fleet so the two overlap."""
    fleet = new_fleet(tmp_path_factory.mktemp("reference-registry"), "redis://unused")
    _register_models(fleet, tiny_checkpoints)
    cases = reference_cases()
    by_checkpoint: dict[str, list[str]] = {}
    for name, (model, _, _) in cases.items():
        by_checkpoint.setdefault(fleet.store.get_version(model).checkpoint_dir, []).append(name)
    pool = ThreadPoolExecutor(max_workers=len(by_checkpoint))
    runs: dict[str, tuple[Future[dict[str, Any]], int]] = {}
    for checkpoint, names in by_checkpoint.items():
        requests = []
        for name in names:
            model, prompt_input, max_tokens = cases[name]
            prompt = engine_prompt(fleet.store, model, prompt_input)
            requests.append({"id": name, "prompt_token_ids": prompt.token_ids,
                             "stop_token_ids": prompt.stop_token_ids,
                             "max_tokens": max_tokens, "temperature": 0.0})
        run = pool.submit(run_reference, Path(checkpoint), requests, dtype="float32",
                          max_model_len=CONTEXT_LIMIT)
        for i, name in enumerate(names):
            runs[name] = (run, i)
    yield References(runs)
    pool.shutdown(wait=True)
