"""Load patterns: a closed loop at a fixed concurrency and an open loop with Poisson arrivals.

Both take any `RunRequest` (the one async interface every backend implements), issue each
prompt once, and return the records (start times relative to the phase start) and the phase
duration: from the first request issued to the last one finished, vLLM's benchmark_duration.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from bench.records import RequestRecord
from bench.settings import Phase
from bench.workload import Prompt

RunRequest = Callable[[Prompt, int], Awaitable[RequestRecord]]
OnDone = Callable[[int], None]


async def _issue(run_request: RunRequest, prompt: Prompt, output_len: int, t0: float
                 ) -> RequestRecord:
    issued = time.perf_counter()
    try:
        record = await run_request(prompt, output_len)
    except Exception as exc:  # a backend bug must not stop the phase; it shows as a failure
        record = RequestRecord(index=prompt.index, prompt_tokens=len(prompt.token_ids),
                               error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    record.start = issued - t0
    return record


async def run_closed(run_request: RunRequest, prompts: Sequence[Prompt], output_len: int,
                     concurrency: int, on_done: OnDone | None = None
                     ) -> tuple[list[RequestRecord], float]:
    """`concurrency` clients, each issuing its next prompt as soon as its previous one ends."""
    pending = iter(prompts)
    records: list[RequestRecord] = []
    t0 = time.perf_counter()

    async def client() -> None:
        for prompt in pending:  # shared iterator: each prompt is taken exactly once
            records.append(await _issue(run_request, prompt, output_len, t0))
            if on_done:
                on_done(len(records))

    await asyncio.gather(*(client() for _ in range(min(concurrency, len(prompts)))))
    return sorted(records, key=lambda r: r.start), time.perf_counter() - t0


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """Arrival times (s) of a Poisson process at `rate`, rescaled so the last one is at
    count / rate, as vLLM's get_request does to keep throughput stable across seeds."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=count)
    gaps[0] = 0.0
    times = np.cumsum(gaps)
    if count > 1 and times[-1] > 0:
        times *= (count / rate) / times[-1]
    return [float(t) for t in times]


async def run_open(run_request: RunRequest, prompts: Sequence[Prompt], output_len: int,
                   rate: float, seed: int, on_done: OnDone | None = None
                   ) -> tuple[list[RequestRecord], float]:
    """Issues each prompt at its Poisson arrival time, however many are still running."""
    arrivals = poisson_arrivals(len(prompts), rate, seed)
    records: list[RequestRecord] = []
    t0 = time.perf_counter()

    async def one(prompt: Prompt, at: float) -> None:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        records.append(await _issue(run_request, prompt, output_len, t0))
        if on_done:
            on_done(len(records))

    await asyncio.gather(*(one(p, at) for p, at in zip(prompts, arrivals)))
    return sorted(records, key=lambda r: r.start), time.perf_counter() - t0


async def run_phase(run_request: RunRequest, phase: Phase, prompts: Sequence[Prompt],
                    output_len: int, seed: int, on_done: OnDone | None = None
                    ) -> tuple[list[RequestRecord], float]:
    if phase.kind == "closed":
        return await run_closed(run_request, prompts, output_len, phase.concurrency, on_done)
    return await run_open(run_request, prompts, output_len, phase.rate, seed, on_done)
