"""The overload client: `python -m bench.overload PLAN.json --events-fd N`.

Drives one fleet (one worker whose capacity is the plan's `capacity`) through gRPC, every
request a greedy `StreamComplete` of exactly `output_len` tokens with the same deadline:

1. warm-up (not measured): `warmup_waves` waves of `capacity` concurrent requests, whose mean
   latency sizes the prompt pool;
2. `capacity`: a closed loop of `capacity` clients for `seconds`, each sending its next request
   when its previous one ends: the load the worker can serve;
3. `overload`: Poisson arrivals for `seconds` at `factor` x the request rate the capacity phase
   completed, through the gateway with admission control;
4. `overload-no-admission` (when the plan has a `baseline` target): the same arrivals through
   a second gateway whose admission control is off: what the fleet did before it.

Between phases it waits until the queue is empty and no worker has a task in flight. Each
request's record: start and end (s since the phase started), status code, tokens received,
time to the first token, and for a refusal the `grpc-retry-pushback-ms` trailer and the
RetryInfo delay. `bench.overload_metrics` turns the records into goodput and the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bench.load import poisson_arrivals
from bench.runner import Events, run_plan_process
from bench.workload import Prompt, make_prompts
from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: Prompts made per expected request of a phase (a phase that runs out stops issuing early,
#: which its record says).
PROMPT_MARGIN = 1.5
#: Longest wait for the fleet to be idle between phases, beyond one deadline.
SETTLE_EXTRA_S = 30.0


class Client:
    """One grpc.aio channel to a gateway; `call` never raises for a failed request."""

    def __init__(self, target: str, model: str, output_len: int, deadline_s: float) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = InferenceServiceStub(self._channel)
        self._model, self._output_len, self._deadline_s = model, output_len, deadline_s
        self._ids = itertools.count()
        self._run = os.urandom(4).hex()

    async def ready(self) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), 30)

    async def call(self, prompt: Prompt, t0: float) -> dict[str, Any]:
        request = api.StreamCompleteRequest(
            model=self._model, prompt=prompt.text,
            sampling=pb.SamplingParams(max_tokens=self._output_len, temperature=0.0,
                                       ignore_eos=True),
            options=pb.RequestOptions(request_id=f"ovl-{self._run}-{next(self._ids)}"))
        start = time.perf_counter()
        record: dict[str, Any] = {"start": start - t0, "code": "OK", "tokens": 0, "ttft": None,
                                  "pushback_ms": None, "retry_delay_ms": None, "detail": ""}
        try:
            async for message in self._stub.StreamComplete(request, timeout=self._deadline_s):
                tokens = sum(len(d.token_ids) for d in message.deltas)
                if tokens and record["ttft"] is None:
                    record["ttft"] = time.perf_counter() - start
                record["tokens"] += tokens
        except grpc.aio.AioRpcError as exc:
            record.update(code=exc.code().name, detail=(exc.details() or "")[:300])
            record.update(retry_hints(exc))
        except Exception as exc:  # noqa: BLE001 - a client-side failure is a record too
            record.update(code="CLIENT_ERROR", detail=f"{type(exc).__name__}: {exc}"[:300])
        record["end"] = time.perf_counter() - t0
        return record

    async def close(self) -> None:
        await self._channel.close()


def retry_hints(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The pushback trailer and the RetryInfo delay of a refusal (None when absent)."""
    out: dict[str, Any] = {}
    trailers = dict(exc.trailing_metadata() or ())
    if PUSHBACK_KEY in trailers:
        out["pushback_ms"] = int(trailers[PUSHBACK_KEY])
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            out["retry_delay_ms"] = info.retry_delay.ToMilliseconds()
    return out


class PromptPool:
    """Distinct prompts, made in batches as phases need them (a new seed per batch)."""

    def __init__(self, model_dir: Path, input_len: int, seed: int) -> None:
        self._model_dir, self._input_len = model_dir, input_len
        self._seeds = itertools.count(seed * 1000 + 1)

    def take(self, count: int) -> Iterator[Prompt]:
        return iter(make_prompts(self._model_dir, max(count, 1), self._input_len,
                                 next(self._seeds)))


async def closed_loop(client: Client, prompts: Iterator[Prompt], concurrency: int,
                      seconds: float) -> tuple[list[dict[str, Any]], bool]:
    """`concurrency` clients, each sending its next request once its previous one ends, until
    `seconds` have passed; returns the records and whether the prompts ran out first."""
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    ran_out = False

    async def one_client() -> None:
        nonlocal ran_out
        while time.perf_counter() - t0 < seconds:
            prompt = next(prompts, None)
            if prompt is None:
                ran_out = True
                return
            records.append(await client.call(prompt, t0))

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return sorted(records, key=lambda r: r["start"]), ran_out


async def open_loop(client: Client, prompts: list[Prompt], rate: float, seed: int
                    ) -> list[dict[str, Any]]:
    """Each prompt sent at its Poisson arrival time (rate `rate`), however many are pending."""
    arrivals = poisson_arrivals(len(prompts), rate, seed)
    t0 = time.perf_counter()

    async def one(prompt: Prompt, at: float) -> dict[str, Any]:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        return await client.call(prompt, t0)

    records = await asyncio.gather(*(one(p, at) for p, at in zip(prompts, arrivals)))
    return sorted(records, key=lambda r: r["start"])


async def wait_until_idle(redis_url: str, queue: str, timeout_s: float) -> float:
    """Waits until nothing waits in `queue`'s fair lines or on its Celery queue (tickets) and
    no worker of it has a task in flight; returns the wait."""
    from redis.asyncio import Redis

    from fleet_common import fair_queue
    from fleet_common.keys import live_workers, worker_status
    from gateway.admission_control import waiting_lists

    client = Redis.from_url(redis_url)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s:
            tickets = sum([await client.llen(name) for name in waiting_lists(queue)])
            lines = int(await client.get(fair_queue.waiting_count(queue)) or 0)
            workers = [w.decode() for w in await client.zrange(live_workers(queue), 0, -1)]
            busy = [await client.hget(worker_status(w), "tasks_in_flight") for w in workers]
            if tickets == 0 and lines <= 0 and not any(int(b or 0) for b in busy):
                break
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    return time.monotonic() - t0


async def run_plan(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    capacity, seconds = int(plan["capacity"]), float(plan["seconds"])
    deadline_s, output_len = float(plan["deadline_s"]), int(plan["output_len"])
    pool = PromptPool(Path(plan["model_dir"]), int(plan["input_len"]), int(plan["seed"]))
    clients = {name: Client(target, plan["model_name"], output_len, deadline_s)
               for name, target in plan["targets"].items()}
    out: dict[str, Any] = {"phases": {}}
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

    async def closed(prompts: Iterator[Prompt], concurrency: int, window: float) -> Any:
        records, ran_out = await closed_loop(clients["admission"], prompts, concurrency, window)
        return records, {"window_s": window, "concurrency": concurrency, "ran_out": ran_out}

    async def opened(client: str, prompts: list[Prompt], rate: float, seed: int) -> Any:
        records = await open_loop(clients[client], prompts, rate, seed)
        return records, {"window_s": seconds, "rate": rate}

    try:
        for client in clients.values():
            await client.ready()
        events.emit("ready", startup_s=0.0)
        waves = max(int(plan.get("warmup_waves", 2)), 1)
        warm = await phase("overload-warmup", waves * capacity, False,
                           closed(pool.take(waves * capacity), capacity, float("inf")))
        ok = [r["end"] - r["start"] for r in warm if r["code"] == "OK"]
        if not ok:
            raise RuntimeError(f"every warm-up request failed, e.g. {warm[0]['detail']}")
        expected = math.ceil(capacity * seconds / (sum(ok) / len(ok)) * PROMPT_MARGIN) + capacity
        records = await phase("capacity", expected, True,
                              closed(pool.take(expected), capacity, seconds))
        served = sum(1 for r in records if r["code"] == "OK" and r["end"] <= seconds)
        rate = float(plan["factor"]) * max(served, 1) / seconds
        count = max(math.ceil(rate * seconds), 1)
        out["overload_rate"] = rate
        await phase("overload", count, True,
                    opened("admission", list(pool.take(count)), rate, int(plan["seed"])))
        if "baseline" in clients:
            await phase("overload-no-admission", count, True,
                        opened("baseline", list(pool.take(count)), rate, int(plan["seed"])))
        out["final_settle_wait_s"] = await wait_until_idle(plan["redis_url"], plan["queue"],
                                                           settle_s)
    finally:
        for client in clients.values():
            await client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    return run_plan_process("python -m bench.overload", run_plan, argv)


if __name__ == "__main__":
    raise SystemExit(main())
