"""The fleet: registry + Redis + one worker + gateway as processes, driven over gRPC.

`FleetDeployment` starts and stops the processes the way the end-to-end tests do
(fleet_cli.processes); `FleetBackend` is the client: one grpc.aio channel, `StreamComplete`
with the prompt as text (the gateway tokenizes it; `verify` checks with PreviewPrompt that it
becomes exactly the workload's token ids), greedy, `ignore_eos`, `max_tokens = output_len`.

Besides the client-side timings, each record keeps what the fleet reports in its last message
(`timings`): queue_wait_ms (gateway enqueue -> worker start: the Redis/Celery hop),
gateway_ttft_ms and gateway_total_ms (measured inside the gateway), engine_ms (worker), and
ack_ms, the client-side time to the first (empty) message, which the gateway sends right
after the request is validated and enqueued.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.records import ChunkClock, RequestRecord
from bench.settings import EngineSettings
from bench.workload import Prompt
from fleet_cli.processes import ManagedProcess, free_port, start_gateway, start_redis, start_worker

WORKER_NAME = "bench-worker"
MODEL_VERSION = "v1"


@dataclass
class Registry:
    url: str
    queue: str
    pool: str


def create_registry(path: Path, engine: EngineSettings) -> Registry:
    """A fresh SQLite registry with the benchmark's model registered as its stable version."""
    from model_registry import registration
    from model_registry.database import migrate, open_engine
    from model_registry.store import RegistryStore

    url = f"sqlite:///{path}"
    db = open_engine(url)
    migrate(db)
    store = RegistryStore(db)
    store.ensure_default_pools()
    kwargs: dict[str, Any] = {
        "model": engine.model_name, "version": MODEL_VERSION,
        "checkpoint_dir": Path(engine.model_dir), "variant": engine.variant,
        "context_limit": engine.max_model_len,
        "tensor_parallel_size": engine.tensor_parallel_size, "dtype": engine.dtype}
    served = registration.register_model(store, **kwargs)
    db.dispose()
    return Registry(url=url, queue=served.queue, pool=served.pool)


def gateway_env(registry: Registry, redis_url: str, log_level: str) -> dict[str, str]:
    return {"FLEET_REGISTRY_URL": registry.url, "FLEET_REDIS_URL": redis_url,
            "FLEET_LOG_LEVEL": log_level}


@dataclass
class FleetDeployment:
    """Redis, one worker and a gateway; `stop` ends them all (engine core included)."""

    registry: Registry
    redis_url: str
    target: str = ""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    @staticmethod
    def start(engine: EngineSettings, run_dir: Path, log_level: str = "INFO",
              on_step: Any = None, worker_env: dict[str, str] | None = None,
              gateway_extra_env: dict[str, str] | None = None,
              prepare_registry: Any = None) -> FleetDeployment:
        """`worker_env` and `gateway_extra_env` add settings (e.g. FLEET_CONCURRENCY);
        `prepare_registry(registry)` runs once the registry exists, before any process starts
        (e.g. to create tenants and keys)."""
        log_dir = run_dir / "logs"
        step = on_step or (lambda _msg: None)
        registry = create_registry(run_dir / "registry.db", engine)
        if prepare_registry is not None:
            prepare_registry(registry)
        port = free_port()
        deployment = FleetDeployment(registry, f"redis://127.0.0.1:{port}/0")
        try:
            step("starting Redis")
            deployment.processes["redis"] = start_redis(port, log_dir)
            step("starting the worker (engine load)")
            env = {"FLEET_REGISTRY_URL": registry.url, "FLEET_MODEL": engine.model_name,
                   "FLEET_ENFORCE_EAGER": "true" if engine.enforce_eager else "false",
                   "FLEET_KV_CACHE_GIB": str(engine.kv_cache_gib),
                   "FLEET_LOG_LEVEL": log_level, **engine.env(), **(worker_env or {})}
            deployment.processes["worker"] = start_worker(
                WORKER_NAME, env, log_dir, redis_url=deployment.redis_url,
                queue=registry.queue, timeout=engine.startup_timeout_s)
            step("starting the gateway")
            gateway, gport = start_gateway(
                {**gateway_env(registry, deployment.redis_url, log_level),
                 **(gateway_extra_env or {})}, log_dir)
            deployment.processes["gateway"] = gateway
            deployment.target = f"127.0.0.1:{gport}"
        except BaseException:
            deployment.stop()
            raise
        return deployment

    def pids(self) -> dict[str, int]:
        return {name: proc.process.pid for name, proc in self.processes.items()}

    def stop(self) -> None:
        for name in ("gateway", "worker", "redis"):
            proc = self.processes.get(name)
            if proc is not None:
                proc.stop()


class FleetBackend:
    name = "fleet"

    def __init__(self, *, target: str, model_name: str, request_timeout_s: float = 600.0
                 ) -> None:
        self._target = target
        self._model = model_name
        self._timeout = request_timeout_s
        self._channel: Any = None
        self._stub: Any = None
        self._run = uuid.uuid4().hex[:8]
        self._ids = itertools.count()

    async def start(self) -> None:
        import grpc

        from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

        self._channel = grpc.aio.insecure_channel(self._target, options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024)])
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        self._stub = InferenceServiceStub(self._channel)

    async def verify(self, prompts: list[Prompt]) -> dict[str, Any]:
        """PreviewPrompt for every prompt: the gateway must build exactly its token ids."""
        from codellama.fleet.v1 import inference_service_pb2 as api

        mismatches: list[dict[str, Any]] = []
        limit = asyncio.Semaphore(16)

        async def check(prompt: Prompt) -> None:
            async with limit:
                view = await self._stub.PreviewPrompt(
                    api.PreviewPromptRequest(model=self._model, prompt=prompt.text), timeout=30)
            if tuple(view.token_ids) != prompt.token_ids:
                mismatches.append({"index": prompt.index, "expected": len(prompt.token_ids),
                                   "got": len(view.token_ids)})

        await asyncio.gather(*(check(p) for p in prompts))
        if mismatches:
            raise RuntimeError(f"PreviewPrompt disagrees with the workload for "
                               f"{len(mismatches)} prompts, e.g. {mismatches[:3]}")
        return {"checked": len(prompts), "how": "PreviewPrompt token ids == workload ids"}

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        from codellama.fleet.v1 import generation_pb2 as pb
        from codellama.fleet.v1 import inference_service_pb2 as api

        request = api.StreamCompleteRequest(
            model=self._model, prompt=prompt.text,
            sampling=pb.SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True),
            options=pb.RequestOptions(
                request_id=f"bench-{self._run}-{prompt.index}-{next(self._ids)}"))
        clock = ChunkClock(prompt.index, len(prompt.token_ids))
        extra = clock.record.extra
        finish = ""
        usage: Any = None
        try:
            call = self._stub.StreamComplete(request, timeout=self._timeout)
            async for message in call:
                if "ack_ms" not in extra:
                    extra["ack_ms"] = clock.since_start_ms()
                tokens = 0
                for delta in message.deltas:
                    tokens += len(delta.token_ids)
                    if delta.finish_reason:
                        finish = pb.FinishReason.Name(delta.finish_reason)
                clock.chunk(tokens)
                if message.HasField("timings"):
                    t = message.timings
                    extra.update(queue_wait_ms=t.queue_wait_ms,
                                 gateway_ttft_ms=t.time_to_first_token_ms,
                                 gateway_total_ms=t.total_ms, engine_ms=t.engine_ms)
                if message.HasField("usage"):
                    usage = message.usage
        except Exception as exc:  # noqa: BLE001 - grpc.aio.AioRpcError and friends
            return clock.finish(error=f"{type(exc).__name__}: {exc}")
        record = clock.finish(finish_reason=finish)
        if usage is not None and usage.completion_tokens != record.output_tokens:
            record.success = False
            record.error = (f"usage says {usage.completion_tokens} completion tokens, "
                            f"deltas carried {record.output_tokens}")
        if usage is not None:
            record.prompt_tokens = usage.prompt_tokens
        return record

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
