"""Load patterns with a fake backend: every prompt once, the concurrency held, arrivals seeded."""

from __future__ import annotations

import asyncio

import pytest

from bench.load import poisson_arrivals, run_closed, run_open
from bench.records import RequestRecord
from bench.workload import Prompt

PROMPTS = [Prompt(i, f"p{i}", (1, i)) for i in range(10)]


class FakeBackend:
    def __init__(self, delay: float = 0.01, fail_on: int | None = None) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.active = 0
        self.peak = 0
        self.seen: list[int] = []

    async def run_request(self, prompt: Prompt, output_len: int) -> RequestRecord:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.seen.append(prompt.index)
        try:
            await asyncio.sleep(self.delay)
            if prompt.index == self.fail_on:
                raise RuntimeError("backend bug")
            return RequestRecord(index=prompt.index, success=True, ttft=self.delay,
                                 latency=self.delay, chunk_tokens=[output_len],
                                 output_tokens=output_len)
        finally:
            self.active -= 1


async def test_closed_loop_holds_concurrency_and_issues_each_prompt_once() -> None:
    backend = FakeBackend()
    done: list[int] = []
    records, duration = await run_closed(backend.run_request, PROMPTS, 4, 3, done.append)
    assert sorted(backend.seen) == list(range(10))
    assert backend.peak == 3
    assert len(records) == 10 and done[-1] == 10
    assert all(r.output_tokens == 4 for r in records)
    assert [r.start for r in records] == sorted(r.start for r in records)
    assert duration >= 4 * 0.01  # ceil(10 / 3) rounds of 10 ms


async def test_a_raising_backend_becomes_a_failed_record() -> None:
    records, _ = await run_closed(FakeBackend(fail_on=2).run_request, PROMPTS[:4], 4, 2)
    failed = [r for r in records if not r.success]
    assert [r.index for r in failed] == [2] and "backend bug" in failed[0].error


def test_poisson_arrivals_are_seeded_and_rescaled() -> None:
    a = poisson_arrivals(50, 5.0, seed=7)
    assert a == poisson_arrivals(50, 5.0, seed=7)
    assert a != poisson_arrivals(50, 5.0, seed=8)
    assert a[0] == 0.0 and a == sorted(a)
    assert a[-1] == pytest.approx(50 / 5.0)  # rescaled like vLLM's get_request


async def test_open_loop_does_not_wait_for_earlier_requests() -> None:
    backend = FakeBackend(delay=0.2)
    records, duration = await run_open(backend.run_request, PROMPTS, 2, rate=100.0, seed=0)
    assert len(records) == 10
    assert backend.peak > 3                       # arrivals every ~10 ms, each takes 200 ms
    assert records[-1].start == pytest.approx(0.1, abs=0.05)
    assert duration < 0.2 + 0.1 + 0.15
