"""The overload phase's arithmetic and load loops, without a fleet: goodput counts only requests
OK within their deadline with every token, inside the window; refusals are tallied by status
with their retry hints; the report shows the ratio; the closed loop stops at its window."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench import report
from bench.overload import closed_loop, open_loop
from bench.overload_metrics import is_good, phase_summary, summarize
from bench.results import overload_checks
from bench.workload import Prompt

DEADLINE_S, OUTPUT_LEN = 5.0, 4


def _record(start: float, end: float, code: str = "OK", tokens: int = OUTPUT_LEN,
            pushback_ms: int | None = None, retry_ms: int | None = None) -> dict[str, Any]:
    return {"start": start, "end": end, "code": code, "tokens": tokens, "ttft": 0.1,
            "pushback_ms": pushback_ms, "retry_delay_ms": retry_ms,
            "detail": "" if code == "OK" else f"{code.lower()} because"}


CAPACITY = {"window_s": 10.0, "duration_s": 12.0, "concurrency": 2, "ran_out": False,
            "records": [_record(0, 2), _record(0, 2), _record(2, 4), _record(2, 4),
                        _record(4, 6), _record(4, 6), _record(6, 8), _record(6, 8),
                        _record(8, 10), _record(8, 10), _record(10, 12)]}
OVERLOAD = {"window_s": 10.0, "duration_s": 14.0, "rate": 4.0, "records": [
    _record(0.0, 2.0), _record(0.5, 3.0), _record(1.0, 4.0), _record(2.0, 6.0),
    _record(3.0, 8.0), _record(4.0, 9.0), _record(6.0, 10.5),  # good, but after the window
    _record(1.0, 6.5),  # OK yet 5.5 s: past its deadline
    _record(1.5, 3.0, tokens=2),  # OK yet short
    _record(2.0, 7.0, code="DEADLINE_EXCEEDED", tokens=3),
    _record(2.5, 2.51, code="RESOURCE_EXHAUSTED", tokens=0, pushback_ms=400, retry_ms=400),
    _record(3.0, 3.02, code="RESOURCE_EXHAUSTED", tokens=0, pushback_ms=800, retry_ms=800),
]}


def test_goodput_counts_ok_within_the_deadline_and_complete_inside_the_window() -> None:
    assert is_good(_record(0, 5.0), DEADLINE_S, OUTPUT_LEN)
    assert not is_good(_record(0, 5.01), DEADLINE_S, OUTPUT_LEN)
    assert not is_good(_record(0, 1, tokens=3), DEADLINE_S, OUTPUT_LEN)
    p = phase_summary(OVERLOAD, DEADLINE_S, OUTPUT_LEN)
    assert (p["good"], p["good_in_window"]) == (7, 6)
    assert p["goodput_rps"] == pytest.approx(0.6)
    assert p["statuses"] == {"DEADLINE_EXCEEDED": 1, "OK": 7, "OK (late or short)": 2,
                             "RESOURCE_EXHAUSTED": 2}
    assert p["tokens_delivered"] == 8 * OUTPUT_LEN + 2 + 3
    assert p["tokens_of_good"] == 7 * OUTPUT_LEN
    assert p["offered_rps"] == 4.0 and p["requests"] == 12
    assert p["refusals_with_pushback"] == p["refusals_with_retry_info"] == 2
    assert p["pushback_ms"]["p50"] == pytest.approx(600)
    assert p["refusal_ms"]["max"] == pytest.approx(20, abs=0.01)
    assert p["examples"]["RESOURCE_EXHAUSTED"] == "resource_exhausted because"


def test_the_ratio_is_to_the_capacity_phases_goodput_over_the_same_window() -> None:
    summary = summarize({"phases": {"capacity": CAPACITY, "overload": OVERLOAD},
                         "overload_rate": 4.0}, DEADLINE_S, OUTPUT_LEN)
    assert summary["phases"]["capacity"]["goodput_rps"] == pytest.approx(1.0)  # 10 of 11
    assert summary["goodput_ratio"] == {"overload": pytest.approx(0.6)}
    checks = {c["check"]: c["ok"] for c in overload_checks({**summary, "settings": {}})}
    assert checks["overload capacity: every request OK within its deadline"]
    assert checks["overload: every RESOURCE_EXHAUSTED carries RetryInfo and the "
                  "grpc-retry-pushback-ms trailer"]
    assert checks["overload: every refusal came back within a second"]


def test_a_refusal_without_its_trailer_fails_the_check() -> None:
    bare = {**OVERLOAD, "records": [*OVERLOAD["records"],
                                     _record(4.0, 4.01, code="RESOURCE_EXHAUSTED", tokens=0)]}
    summary = summarize({"phases": {"capacity": CAPACITY, "overload": bare}}, DEADLINE_S,
                        OUTPUT_LEN)
    checks = {c["check"]: c["ok"] for c in overload_checks({**summary, "settings": {}})}
    assert not checks["overload: every RESOURCE_EXHAUSTED carries RetryInfo and the "
                      "grpc-retry-pushback-ms trailer"]


def test_the_report_shows_each_phase_with_its_ratio_and_statuses() -> None:
    summary = summarize({"phases": {"capacity": CAPACITY, "overload": OVERLOAD},
                         "overload_rate": 4.0}, DEADLINE_S, OUTPUT_LEN)
    summary["settings"] = {"capacity": 2, "input_len": 16, "output_len": OUTPUT_LEN,
                           "deadline_s": DEADLINE_S, "seconds": 10.0, "factor": 4.0,
                           "queue_factor": 2.0}
    summary["cpu_s"] = {"overload": {"gateway": 1.4, "redis": 0.0}}
    text = "\n".join(report._overload({"overload": summary}))
    assert "| `capacity` | 2 clients | 11 | 1.00 | 1.000x | OK 11 |" in text
    assert "| `overload` | 4.00 req/s | 12 | 0.60 | 0.600x |" in text
    assert "RESOURCE_EXHAUSTED 2" in text and "`overload`: gateway 0.10." in text
    assert "- RESOURCE_EXHAUSTED: `resource_exhausted because`" in text


class FakeClient:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.active = self.peak = 0

    async def call(self, prompt: Prompt, t0: float) -> dict[str, Any]:
        start = time.perf_counter() - t0
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(self.delay_s)
        self.active -= 1
        return _record(start, time.perf_counter() - t0)


async def test_the_closed_loop_stops_sending_when_its_window_ends() -> None:
    client = FakeClient(0.05)
    prompts = iter([Prompt(i, "p", (1,)) for i in range(1000)])
    records, ran_out = await closed_loop(client, prompts, 3, 0.3)  # type: ignore[arg-type]
    assert not ran_out and client.peak == 3
    assert all(r["start"] < 0.3 for r in records) and 12 <= len(records) <= 21
    records, ran_out = await closed_loop(client, iter(PROMPTS_FEW), 3, 5.0)  # type: ignore
    assert ran_out and len(records) == len(PROMPTS_FEW)


PROMPTS_FEW = [Prompt(i, "p", (1,)) for i in range(4)]


async def test_the_open_loop_sends_at_the_arrival_times_however_many_are_pending() -> None:
    client = FakeClient(0.2)
    records = await open_loop(client, [Prompt(i, "p", (1,)) for i in range(10)],  # type: ignore
                              rate=50.0, seed=1)
    assert len(records) == 10 and client.peak >= 5
    assert records[-1]["start"] == pytest.approx(0.2, abs=0.05)  # 10 arrivals at 50/s
