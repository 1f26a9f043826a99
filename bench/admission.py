"""The gateway alone: how many requests per second it validates and enqueues, per core.

No worker consumes: the orchestrator starts Redis and a gateway on the benchmark's registry
and fakes a live worker (ZADD fleet:workers:<queue> <worker> <now + 600>), so the gateway
admits and every admitted request stays in the Celery queue, where it is counted (LLEN).

Two measurements, both with the benchmark's prompts (so tokenization is realistic):

- ``grpc``: many concurrent `StreamComplete` calls; the gateway sends its first (empty)
  message only after the request is validated, tokenized, budget-checked and published to
  Celery, so the time to that message is the admission latency. The client then cancels the
  call, which also costs the gateway a little (the stream read it had started, and a cancel
  SET + PUBLISH). Requests per second are also divided by the gateway process's CPU seconds
  (from /proc) over the same window: "per core", whatever the client costs on a shared box.
- ``inprocess``: the gateway's own objects (settings, registry view, prompt builder with its
  tokenizers preloaded, Celery dispatcher), wired as gateway/server.py wires them, and
  `InferenceServicer.admit` awaited directly, many at a time, in this process: admission
  without gRPC. CPU is this process's (all threads, the prompt-build and publisher threads
  included). The admitted requests are released after the measured window. Alongside, the
  synchronous parts are timed one at a time: validation + prompt build (tokenization) and
  one task publish (the Celery message built by fleet_common.task_message, LPUSHed on the
  queue). A plan's optional `inline_max_chars` overrides the prompt builder's threshold for
  building off the event loop (0: every prompt in a thread).

With `profile` in the plan, each measurement is followed by an unmeasured repeat during which
the orchestrator samples the gateway (gRPC) or this process (in-process) with py-spy.

`python -m bench.admission PLAN.json --events-fd N` (started by bench.cli).
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

from bench.cpu import process_cpu_s
from bench.metrics import distribution_ms
from bench.runner import Events, run_plan_process

FAKE_WORKER = "bench-fake-worker"


def fake_live_worker(redis_url: str, queue: str, seconds: float = 600.0) -> None:
    import redis

    from fleet_common.keys import live_workers

    client = redis.Redis.from_url(redis_url)
    client.zadd(live_workers(queue), {FAKE_WORKER: time.time() + seconds})
    client.close()


def _queue_length(redis_url: str, queue: str, *, clear: bool = False) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        length = int(client.llen(queue))
        if clear:
            client.delete(queue)
        return length
    finally:
        client.close()


async def _drive(total: int, concurrency: int, call: Any, events: Events, name: str
                 ) -> tuple[list[float], int]:
    """Runs `call(i)` `total` times, `concurrency` at once; returns latencies and failures."""
    latencies: list[float] = []
    failures = 0
    next_index = iter(range(total))

    async def client() -> None:
        nonlocal failures
        for i in next_index:
            started = time.perf_counter()
            try:
                await call(i)
                latencies.append(time.perf_counter() - started)
            except Exception:  # noqa: BLE001 - counted
                failures += 1
            done = len(latencies) + failures
            if done % 100 == 0 or done == total:
                events.emit("progress", phase=name, done=done, total=total)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, failures


async def _profile_pass(plan: dict[str, Any], events: Events, name: str, total: int,
                        concurrency: int, call: Any) -> None:
    """An unmeasured repeat while the orchestrator samples the process with py-spy."""
    if not plan.get("profile"):
        return
    events.emit("phase_start", phase=name, total=total, measured=False)
    started = time.perf_counter()
    _, failures = await _drive(total, concurrency, call, events, name)
    events.emit("phase_end", phase=name, duration_s=time.perf_counter() - started,
                failed=failures)
    _queue_length(plan["redis_url"], plan["queue"], clear=True)


async def grpc_admission(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    import grpc

    from codellama.fleet.v1 import generation_pb2 as pb
    from codellama.fleet.v1 import inference_service_pb2 as api
    from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

    texts = plan["texts"]
    total, concurrency = int(plan["grpc_requests"]), int(plan["grpc_concurrency"])
    channel = grpc.aio.insecure_channel(plan["target"])
    stub = InferenceServiceStub(channel)
    sampling = pb.SamplingParams(max_tokens=int(plan["max_tokens"]), temperature=0.0,
                                 ignore_eos=True)

    async def admit(i: int) -> None:
        call = stub.StreamComplete(api.StreamCompleteRequest(
            model=plan["model_name"], prompt=texts[i % len(texts)], sampling=sampling),
            timeout=30)
        first = await call.read()
        call.cancel()
        if first is grpc.aio.EOF or not first.request_id:
            raise RuntimeError("no acknowledgement")

    await _drive(min(200, total), min(concurrency, 32), admit, events, "admission-grpc-warmup")
    await asyncio.sleep(1.0)
    _queue_length(plan["redis_url"], plan["queue"], clear=True)
    events.emit("phase_start", phase="admission-grpc", total=total, measured=True)
    gateway_cpu0, client_cpu0 = process_cpu_s(plan["gateway_pid"]), time.process_time()
    wall0 = time.perf_counter()
    latencies, failures = await _drive(total, concurrency, admit, events, "admission-grpc")
    wall = time.perf_counter() - wall0
    await asyncio.sleep(1.0)  # let the gateway finish handling the cancellations
    gateway_cpu = process_cpu_s(plan["gateway_pid"]) - gateway_cpu0
    client_cpu = time.process_time() - client_cpu0
    events.emit("phase_end", phase="admission-grpc", duration_s=wall, failed=failures)
    admitted = len(latencies)
    enqueued = _queue_length(plan["redis_url"], plan["queue"], clear=True)
    await _profile_pass(plan, events, "admission-grpc-profile", total, concurrency, admit)
    await channel.close()
    return {
        "requests": total, "concurrency": concurrency, "admitted": admitted,
        "failed": failures, "enqueued_in_redis": enqueued, "wall_s": wall,
        "requests_per_s": admitted / wall, "gateway_cpu_s": gateway_cpu,
        "gateway_cpu_utilization": gateway_cpu / wall,
        "requests_per_gateway_cpu_s": admitted / gateway_cpu if gateway_cpu else None,
        "gateway_cpu_ms_per_request": gateway_cpu * 1000 / admitted if admitted else None,
        "client_cpu_s": client_cpu, "ack_latency_ms": distribution_ms(latencies),
    }


class _Context:
    """Stands in for grpc.aio.ServicerContext in the in-process measurement."""

    def __init__(self, remaining: float) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float:
        return self._remaining

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def _wire_gateway(registry_url: str, redis_url: str, inline_max_chars: int | None = None
                        ) -> dict[str, Any]:
    """The gateway's objects, as gateway/server.py `serve` builds them."""
    from redis.asyncio import Redis

    from gateway.auth import Authenticator
    from gateway.dispatch import Dispatcher
    from gateway.model_directory import ModelDirectory
    from gateway.prompts import PromptBuilder
    from gateway.servicer import InferenceServicer
    from gateway.settings import GatewaySettings
    from model_registry.reader import open_registry_reader

    settings = GatewaySettings(registry_url=registry_url, redis_url=redis_url)
    models = ModelDirectory(open_registry_reader(settings.registry_url),
                            settings.registry_refresh_s)
    models.load()
    redis = Redis.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                           socket_timeout=settings.redis_socket_timeout_s)
    dispatcher = Dispatcher(redis, worker_liveness_s=settings.worker_liveness_s)
    options = {} if inline_max_chars is None else {"inline_max_chars": inline_max_chars}
    prompts = PromptBuilder(settings.limits, **options)
    await prompts.preload(models.all_served())
    servicer = InferenceServicer(settings, models, prompts, dispatcher,
                                 Authenticator(settings.api_keys))
    return {"settings": settings, "models": models, "redis": redis,
            "dispatcher": dispatcher, "prompts": prompts, "servicer": servicer}


def _time_sync(count: int, fn: Any) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(count):
        fn(i)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"count": count, "us_per_call": wall / count * 1e6, "cpu_us_per_call": cpu / count * 1e6}


async def inprocess_admission(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    from codellama.fleet.v1 import generation_pb2 as pb
    from codellama.fleet.v1 import inference_service_pb2 as api
    from fleet_common.keys import GENERATE_TASK
    from gateway.prompts import PromptInput
    from gateway.validation import validate_sampling

    texts = plan["texts"]
    total, concurrency = int(plan["inprocess_requests"]), int(plan["inprocess_concurrency"])
    gw = await _wire_gateway(plan["registry_url"], plan["redis_url"],
                             plan.get("inline_max_chars"))
    servicer, prompts, settings = gw["servicer"], gw["prompts"], gw["settings"]
    served = gw["models"].resolve(plan["model_name"])
    sampling = pb.SamplingParams(max_tokens=int(plan["max_tokens"]), temperature=0.0,
                                 ignore_eos=True)
    requests = [api.StreamCompleteRequest(model=plan["model_name"], prompt=t, sampling=sampling)
                for t in texts]
    context = _Context(30.0)
    admitted_runs: list[Any] = []

    async def admit(i: int) -> None:
        request = requests[i % len(requests)]
        admitted_runs.append(await servicer.admit(PromptInput.completion(request), request,
                                                  context))

    async def release_admitted() -> None:
        while admitted_runs:
            await gw["dispatcher"].finish(admitted_runs.pop().run)

    await _drive(min(200, total), min(concurrency, 32), admit, events, "admission-inprocess-warmup")
    await release_admitted()
    _queue_length(plan["redis_url"], plan["queue"], clear=True)
    events.emit("phase_start", phase="admission-inprocess", total=total, measured=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    latencies, failures = await _drive(total, concurrency, admit, events, "admission-inprocess")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    events.emit("phase_end", phase="admission-inprocess", duration_s=wall, failed=failures)
    await release_admitted()
    admitted = len(latencies)
    enqueued = _queue_length(plan["redis_url"], plan["queue"], clear=True)
    await _profile_pass(plan, events, "admission-inprocess-profile", total, concurrency, admit)
    await release_admitted()

    # The synchronous pieces, one call at a time.
    n = min(total, 1000)

    def build(i: int) -> None:
        request = requests[i % len(requests)]
        checked = validate_sampling(request.sampling, settings.limits)
        built = prompts.build(served, PromptInput.completion(request))
        prompts.check_budget(served, built, checked.max_tokens)

    built = prompts.build(served, PromptInput.completion(requests[0]))
    payload = {"prompt_token_ids": built.token_ids}

    import redis as sync_redis

    from fleet_common.task_message import task_message

    publisher = sync_redis.Redis.from_url(plan["redis_url"])

    def publish(i: int) -> None:
        now = time.time()
        publisher.lpush(plan["queue"], task_message(
            GENERATE_TASK, f"bench-sync-{i}", (payload,), plan["queue"],
            expires_unix=now + 60, now_unix=now))

    pieces = {"validate_and_build_prompt": _time_sync(n, build),
              "publish_task": _time_sync(n, publish)}
    publisher.close()
    _queue_length(plan["redis_url"], plan["queue"], clear=True)
    await gw["redis"].aclose()
    return {
        "requests": total, "concurrency": concurrency, "admitted": admitted,
        "failed": failures, "enqueued_in_redis": enqueued, "wall_s": wall,
        "requests_per_s": admitted / wall, "process_cpu_s": cpu,
        "requests_per_cpu_s": admitted / cpu if cpu else None,
        "cpu_ms_per_request": cpu * 1000 / admitted if admitted else None,
        "latency_ms": distribution_ms(latencies), "pieces": pieces,
    }


async def run(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if int(plan["grpc_requests"]) > 0:
        out["grpc"] = await grpc_admission(plan, events)
    if int(plan["inprocess_requests"]) > 0:
        try:
            out["inprocess"] = await inprocess_admission(plan, events)
        except Exception as exc:  # noqa: BLE001 - the gateway's internals may have moved
            out["inprocess"] = {"error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()}
    return out


def main(argv: list[str] | None = None) -> int:
    return run_plan_process("python -m bench.admission", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
