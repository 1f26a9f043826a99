"""The fairness client: `python -m bench.fairness PLAN.json --events-fd N`.

Drives one fleet (one worker of `capacity` slots, a gateway that knows the registry's tenants
by their API keys: A, perhaps with a `max_concurrent` quota, so that its flood goes up to it; B
and the probe's tenant without quota) through gRPC, every request a greedy `StreamComplete` of
exactly `output_len` tokens with the same deadline, each sent with `authorization: Bearer <its
tenant's key>`:

1. `fairness-warmup` (not measured): `warmup_waves` waves of `capacity` concurrent requests;
2. `capacity`: a closed loop of `capacity` clients of the probe's tenant (no quota, so A's
   quota does not cap it) for `probe_seconds`: what the
   worker serves (requests and tokens per second). B's rate, unless the plan gives one, is
   `b_share` x the request rate it completed;
3. `b-alone`: tenant B alone, Poisson arrivals at `b_rate` for `seconds`;
4. `b-with-a-flood`: B's same arrival times again, and at once tenant A's Poisson arrivals at
   `a_multiple` x `b_rate` (far past capacity), through the gateway with admission control;
5. `b-with-a-flood-no-admission` (when the plan has a `no-admission` target): the same two
   arrival sequences through a second gateway whose admission control is off, so that only
   the fair waiting lines stand between A's flood and B;
6. `b-with-a-flood-fifo` (when the plan asks for the `fifo` control): the same again, but A
   and B both send the probe tenant's key (no quota), so both are one tenant in one waiting
   line served first come first served:
   what B would get without fair share (through the `no-admission` gateway when there is
   one, where only the waiting line decides);
7. `a-alone` (when the plan asks): A's flood arrivals alone.

Between phases it waits until the fleet is idle: nothing in the fair waiting lines nor on the
Celery queue, no task in flight. Each record is `bench.overload`'s (start, end, code, tokens,
ttft, retry hints, detail) plus the tenant. `bench.fairness_metrics` computes the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from pathlib import Path
from typing import Any

import grpc

from bench.fairness_metrics import (
    A_ALONE,
    B_ALONE,
    CAPACITY,
    FLOOD,
    FLOOD_FIFO,
    FLOOD_NO_ADMISSION,
    PROBE,
    A,
    B,
)
from bench.load import poisson_arrivals
from bench.overload import SETTLE_EXTRA_S, PromptPool, closed_loop, retry_hints, wait_until_idle
from bench.runner import Events, run_plan_process
from bench.workload import Prompt
from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

WARMUP = "fairness-warmup"
#: Longest wait for the gateway to route the model after it started.
ROUTABLE_TIMEOUT_S = 60.0


class TenantClient:
    """One grpc.aio channel to a gateway; `call` never raises for a failed request."""

    def __init__(self, target: str, model: str, output_len: int, deadline_s: float,
                 keys: dict[str, str]) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = InferenceServiceStub(self._channel)
        self._model, self._output_len, self._deadline_s = model, output_len, deadline_s
        self._metadata = {tenant: (("authorization", f"Bearer {key}"),)
                          for tenant, key in keys.items()}
        self._ids = itertools.count()
        self._run = os.urandom(4).hex()

    async def ready(self, tenant: str) -> None:
        """Until the gateway routes the model (its first registry poll, the worker's first
        heartbeat): tiny requests until one is not NOT_FOUND / UNAVAILABLE."""
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        deadline = time.monotonic() + ROUTABLE_TIMEOUT_S
        while True:
            request = api.StreamCompleteRequest(
                model=self._model, prompt="def f():",
                sampling=pb.SamplingParams(max_tokens=1, temperature=0.0))
            try:
                async for _ in self._stub.StreamComplete(request, timeout=30,
                                                         metadata=self._metadata[tenant]):
                    pass
                return
            except grpc.aio.AioRpcError as exc:
                retry = exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)
                if not retry or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def call(self, prompt: Prompt, t0: float, tenant: str) -> dict[str, Any]:
        request = api.StreamCompleteRequest(
            model=self._model, prompt=prompt.text,
            sampling=pb.SamplingParams(max_tokens=self._output_len, temperature=0.0,
                                       ignore_eos=True),
            options=pb.RequestOptions(request_id=f"fair-{self._run}-{next(self._ids)}"))
        start = time.perf_counter()
        record: dict[str, Any] = {"tenant": tenant, "start": start - t0, "code": "OK",
                                  "tokens": 0, "ttft": None, "pushback_ms": None,
                                  "retry_delay_ms": None, "detail": ""}
        try:
            async for message in self._stub.StreamComplete(request, timeout=self._deadline_s,
                                                           metadata=self._metadata[tenant]):
                tokens = sum(len(d.token_ids) for d in message.deltas)
                if tokens and record["ttft"] is None:
                    record["ttft"] = time.perf_counter() - start
                record["tokens"] += tokens
                if message.HasField("timings"):  # the gateway's enqueue -> a worker's start
                    record["queue_wait_ms"] = message.timings.queue_wait_ms
        except grpc.aio.AioRpcError as exc:
            record.update(code=exc.code().name, detail=(exc.details() or "")[:300])
            record.update(retry_hints(exc))
        except Exception as exc:
            record.update(code="CLIENT_ERROR", detail=f"{type(exc).__name__}: {exc}"[:300])
        record["end"] = time.perf_counter() - t0
        return record

    async def close(self) -> None:
        await self._channel.close()


class _Tenant:
    """`closed_loop` wants `client.call(prompt, t0)`: one tenant's view of a TenantClient."""

    def __init__(self, client: TenantClient, tenant: str) -> None:
        self._client, self._tenant = client, tenant

    async def call(self, prompt: Prompt, t0: float) -> dict[str, Any]:
        return await self._client.call(prompt, t0, self._tenant)


async def open_loops(client: TenantClient, streams: list[tuple[str, list[Prompt], float, int]]
                     ) -> list[dict[str, Any]]:
    """Several tenants' Poisson arrivals at once, from one t0: (tenant, prompts, rate, seed)
    each; every prompt is sent at its arrival time however many are pending."""
    t0 = time.perf_counter()

    async def one(tenant: str, prompt: Prompt, at: float) -> dict[str, Any]:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        return await client.call(prompt, t0, tenant)

    calls = [one(tenant, p, at) for tenant, prompts, rate, seed in streams
             for p, at in zip(prompts, poisson_arrivals(len(prompts), rate, seed))]
    records = await asyncio.gather(*calls)
    return sorted(records, key=lambda r: r["start"])


def b_rate_of(plan: dict[str, Any], capacity_rps: float) -> float:
    """B's Poisson rate: the plan's, or `b_share` of what the capacity probe completed."""
    given = float(plan.get("b_rate") or 0.0)
    return given if given > 0 else float(plan["b_share"]) * capacity_rps


async def run_plan(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    capacity, seconds = int(plan["capacity"]), float(plan["seconds"])
    probe_s = float(plan["probe_seconds"])
    deadline_s, output_len = float(plan["deadline_s"]), int(plan["output_len"])
    seed = int(plan["seed"])
    pool = PromptPool(Path(plan["model_dir"]), int(plan["input_len"]), seed + 7)
    clients = {name: TenantClient(target, plan["model_name"], output_len, deadline_s,
                                  plan["keys"])
               for name, target in plan["targets"].items()}
    main = clients["admission"]
    out: dict[str, Any] = {"phases": {}, "a_max_concurrent": plan.get("a_max_concurrent")}
    settle_s = deadline_s + SETTLE_EXTRA_S

    async def phase(name: str, total: int, measured: bool, body: Any) -> list[dict[str, Any]]:
        out["phases"].setdefault(name, {})["settle_wait_s"] = await wait_until_idle(
            plan["redis_url"], plan["queue"], settle_s)
        events.emit("phase_start", phase=name, total=total, measured=measured)
        started = time.perf_counter()
        records, extra = await body
        duration = time.perf_counter() - started
        failed = sum(1 for r in records if r["code"] != "OK")
        events.emit("phase_end", phase=name, duration_s=duration, failed=failed)
        out["phases"][name].update(duration_s=duration, measured=measured, records=records,
                                   **extra)
        return records

    async def closed(prompts: Any, window: float) -> Any:
        records, ran_out = await closed_loop(_Tenant(main, PROBE), prompts, capacity, window)
        return records, {"window_s": window, "concurrency": capacity, "ran_out": ran_out,
                         "rates": {}}

    def opened(client: TenantClient, rates: dict[str, float]) -> Any:
        """The phase's body; its prompts are made now, before the phase starts. B's arrivals
        use the same seed in every phase, so B offers the very same load each time."""
        seeds = {B: seed * 1000 + 2, A: seed * 1000 + 1}
        streams = [(tenant, list(pool.take(max(math.ceil(rate * seconds), 1))), rate,
                    seeds[tenant]) for tenant, rate in rates.items()]

        async def body() -> Any:
            return await open_loops(client, streams), {"window_s": seconds, "rates": rates}

        return body()

    try:
        for client in clients.values():
            for tenant in plan["keys"]:
                await client.ready(tenant)
        events.emit("ready", startup_s=0.0)
        waves = max(int(plan.get("warmup_waves", 2)), 1)
        warm = await phase(WARMUP, waves * capacity, False,
                           closed(pool.take(waves * capacity), float("inf")))
        ok = [r["end"] - r["start"] for r in warm if r["code"] == "OK"]
        if not ok:
            raise RuntimeError(f"every warm-up request failed, e.g. {warm[0]['detail']}")
        expected = math.ceil(capacity * probe_s / (sum(ok) / len(ok)) * 1.5) + capacity
        probe = await phase(CAPACITY, expected, True, closed(pool.take(expected), probe_s))
        served = sum(1 for r in probe if r["code"] == "OK" and r["end"] <= probe_s)
        b_rate = b_rate_of(plan, max(served, 1) / probe_s)
        a_rate = float(plan["a_multiple"]) * b_rate
        out.update(b_rate=b_rate, a_rate=a_rate)
        b_count = max(math.ceil(b_rate * seconds), 1)
        a_count = max(math.ceil(a_rate * seconds), 1)
        await phase(B_ALONE, b_count, True, opened(main, {B: b_rate}))
        await phase(FLOOD, a_count + b_count, True, opened(main, {B: b_rate, A: a_rate}))
        if "no-admission" in clients:
            await phase(FLOOD_NO_ADMISSION, a_count + b_count, True,
                        opened(clients["no-admission"], {B: b_rate, A: a_rate}))
        if plan.get("fifo"):
            target = plan["targets"].get("no-admission", plan["targets"]["admission"])
            one_key = plan["keys"][PROBE]
            clients["fifo"] = TenantClient(target, plan["model_name"], output_len, deadline_s,
                                           {A: one_key, B: one_key})
            await clients["fifo"].ready(A)
            await phase(FLOOD_FIFO, a_count + b_count, True,
                        opened(clients["fifo"], {B: b_rate, A: a_rate}))
        if plan.get("a_alone"):
            await phase(A_ALONE, a_count, True, opened(main, {A: a_rate}))
        out["final_settle_wait_s"] = await wait_until_idle(plan["redis_url"], plan["queue"],
                                                           settle_s)
    finally:
        for client in clients.values():
            await client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    return run_plan_process("python -m bench.fairness", run_plan, argv)


if __name__ == "__main__":
    raise SystemExit(main())
