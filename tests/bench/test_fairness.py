"""The fairness phase's arithmetic and load loop, without a fleet: per-tenant figures count only
requests OK within their deadline with every token; the headline divides B's TTFT p50 with A's
flood by B's alone, B's completed requests likewise, and A's tokens/s by the capacity B
leaves; the first-come-first-served control has no target; the report shows misses; the open
loop sends both tenants' arrivals from one start, B's the same in every phase."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench import fairness_metrics as fm
from bench.__main__ import parser, settings_from
from bench.fairness import b_rate_of, open_loops
from bench.fairness_metrics import (
    B_ALONE,
    CAPACITY,
    FLOOD,
    FLOOD_FIFO,
    A,
    B,
    fairness_checks,
    fairness_targets,
    headline,
    phase_summary,
    report_lines,
    summarize,
    tenant_summary,
)
from bench.settings import FairnessSettings
from bench.workload import Prompt

DEADLINE_S, OUTPUT_LEN, WINDOW = 5.0, 4, 10.0


def _r(tenant: str, start: float, end: float, ttft: float | None = 0.1, code: str = "OK",
       tokens: int = OUTPUT_LEN, wait_ms: float | None = 20.0, pushback: int | None = None,
       retry: int | None = None) -> dict[str, Any]:
    return {"tenant": tenant, "start": start, "end": end, "code": code, "tokens": tokens,
            "ttft": ttft, "queue_wait_ms": wait_ms, "pushback_ms": pushback,
            "retry_delay_ms": retry, "detail": "" if code == "OK" else f"{code} said so"}


def _refused(tenant: str, at: float, hints: bool = True) -> dict[str, Any]:
    return _r(tenant, at, at + 0.01, ttft=None, code="RESOURCE_EXHAUSTED", tokens=0,
              wait_ms=None, pushback=250 if hints else None, retry=250 if hints else None)


def _phase(records: list[dict[str, Any]], rates: dict[str, float] | None = None,
           concurrency: int | None = None) -> dict[str, Any]:
    return {"window_s": WINDOW, "duration_s": WINDOW + 1, "records": records,
            "rates": rates or {}, "concurrency": concurrency, "ran_out": False}


# capacity: 2 clients, 10 requests of 4 tokens inside the 10 s window -> 4 tokens/s
CAPACITY_PHASE = _phase([_r(A, i, i + 2.0, ttft=0.3) for i in range(0, 10, 2)]
                        + [_r(A, i, i + 2.0, ttft=0.3) for i in range(0, 10, 2)]
                        + [_r(A, 10.0, 12.0, ttft=0.3)], concurrency=2)
# B alone: 5 requests, TTFT 0.1 .. 0.5 s (p50 0.3 s)
B_TIMES = [(0.0, 0.1), (2.0, 0.2), (4.0, 0.3), (6.0, 0.4), (8.0, 0.5)]
B_ALONE_PHASE = _phase([_r(B, s, s + 1.0, ttft=t) for s, t in B_TIMES], rates={B: 0.5})


def _flood(b_ttft_scale: float, b_refused: int, a_ok: int) -> dict[str, Any]:
    b = [_r(B, s, s + 1.0, ttft=t * b_ttft_scale, wait_ms=200.0)
         for s, t in B_TIMES[b_refused:]]
    b += [_refused(B, s) for s, _ in B_TIMES[:b_refused]]
    a = [_r(A, 0.5 * i, 0.5 * i + 3.0, ttft=2.0) for i in range(a_ok)]
    a += [_refused(A, 0.1 * i) for i in range(20)]
    a.append(_r(A, 1.0, 7.0, code="DEADLINE_EXCEEDED", tokens=2, ttft=4.0))
    return _phase(b + a, rates={B: 0.5, A: 5.0})


def test_a_tenants_figures_count_only_complete_requests_within_their_deadline() -> None:
    records = [_r(B, 0, 1.0, ttft=0.1), _r(B, 1, 2.0, ttft=0.3, wait_ms=40),
               _r(B, 2, 7.5, ttft=0.2),  # OK but 5.5 s: past its deadline
               _r(B, 3, 4.0, tokens=2),  # OK but short
               _r(B, 9, 10.5, ttft=0.5),  # complete, after the window
               _refused(B, 4.0), _refused(B, 4.5, hints=False),
               _r(B, 5, 10.0, code="DEADLINE_EXCEEDED", tokens=1, ttft=4.0)]
    t = tenant_summary(records, WINDOW, DEADLINE_S, OUTPUT_LEN, offered_rps=0.8)
    assert (t["requests"], t["completed"], t["completed_in_window"]) == (8, 3, 2)
    assert t["tokens_per_s"] == pytest.approx(2 * OUTPUT_LEN / WINDOW)
    assert t["tokens_delivered"] == 4 * OUTPUT_LEN + 2 + 1
    assert t["statuses"] == {"DEADLINE_EXCEEDED": 1, "OK": 3, "OK (late or short)": 2,
                             "RESOURCE_EXHAUSTED": 2}
    assert t["refused"] == 2 and t["refusals_with_pushback"] == 1
    assert t["ttft_ms"]["count"] == 3 and t["ttft_ms"]["p50"] == pytest.approx(300)
    assert t["queue_wait_ms"]["max"] == pytest.approx(40)
    assert t["offered_rps"] == 0.8
    assert t["examples"] == {"DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED said so",
                             "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED said so"}


def test_a_phase_is_split_by_tenant_and_a_silent_tenant_still_shows() -> None:
    p = phase_summary(_phase([_r(B, 0, 1)], rates={B: 0.1, A: 1.0}), DEADLINE_S, OUTPUT_LEN)
    assert set(p["tenants"]) == {A, B}
    assert p["tenants"][A]["requests"] == 0 and p["tenants"][A]["offered_rps"] == 1.0
    assert p["tenants"][B]["completed"] == 1


def _summary(flood: dict[str, Any], fifo: dict[str, Any] | None = None) -> dict[str, Any]:
    phases = {CAPACITY: CAPACITY_PHASE, B_ALONE: B_ALONE_PHASE, FLOOD: flood}
    if fifo is not None:
        phases[FLOOD_FIFO] = fifo
    return summarize({"phases": phases, "b_rate": 0.5, "a_rate": 5.0}, DEADLINE_S,
                     OUTPUT_LEN)


def test_the_headline_meets_the_targets_when_b_is_barely_slowed_and_a_takes_the_rest() -> None:
    s = _summary(_flood(b_ttft_scale=1.4, b_refused=0, a_ok=6))
    assert s["phases"][CAPACITY]["tenants"][A]["tokens_per_s"] == pytest.approx(4.0)
    h = s["headline"][FLOOD]
    assert h["b_ttft_p50_alone_ms"] == pytest.approx(300)
    assert h["b_ttft_p50_ratio"] == pytest.approx(1.4)
    assert h["b_completed_ratio"] == 1.0 and h["b_refused"] == 0
    # B: 5 x 4 tokens in 10 s = 2 tokens/s, leaving 4 - 2; A: 6 x 4 tokens in 10 s = 2.4
    assert h["capacity_left_tokens_per_s"] == pytest.approx(2.0)
    assert h["a_share_of_left"] == pytest.approx(1.2)
    assert h["a_refused"] == 20
    assert h["b_queue_wait_p50_ms"] == pytest.approx(200)
    assert h["passed"] == {"b_ttft": True, "b_completed": True, "a_share": True}
    assert [t["passed"] for t in fairness_targets({**s, "settings": {"a_multiple": 10}})] \
        == [True, True, True]


def test_the_headline_misses_when_b_is_slowed_refused_or_a_starves() -> None:
    h = _summary(_flood(b_ttft_scale=1.6, b_refused=2, a_ok=3))["headline"][FLOOD]
    assert h["b_ttft_p50_ratio"] == pytest.approx(0.4 * 1.6 / 0.3)  # B's three left: 0.3-0.5
    assert h["b_completed_ratio"] == pytest.approx(3 / 5) and h["b_refused"] == 2
    # B: 3 x 4 / 10 = 1.2 tokens/s, leaving 2.8; A: 3 x 4 / 10 = 1.2 -> 0.43
    assert h["a_share_of_left"] == pytest.approx(1.2 / 2.8)
    assert h["passed"] == {"b_ttft": False, "b_completed": False, "a_share": False}


def test_a_ratio_is_none_without_the_figures_it_needs() -> None:
    phases = {B_ALONE: phase_summary(_phase([_refused(B, 0)], rates={B: 0.1}), DEADLINE_S,
                                     OUTPUT_LEN),
              FLOOD: phase_summary(_flood(1.0, 0, 1), DEADLINE_S, OUTPUT_LEN)}
    h = headline(phases, FLOOD)
    assert h is not None
    assert h["b_ttft_p50_ratio"] is None and h["b_completed_ratio"] is None
    assert h["capacity_left_tokens_per_s"] is None and h["a_share_of_left"] is None
    assert set(h["passed"].values()) == {None}
    assert headline(phases, fm.FLOOD_NO_ADMISSION) is None


def test_the_fifo_control_has_figures_but_no_target() -> None:
    s = _summary(_flood(1.0, 0, 6), fifo=_flood(10.0, 0, 6))
    control = s["headline"][FLOOD_FIFO]
    assert control["control"] and control["b_ttft_p50_ratio"] == pytest.approx(10.0)
    assert set(control["passed"].values()) == {None}
    names = [t["target"] for t in fairness_targets({**s, "settings": {"a_multiple": 10}})]
    assert len(names) == 3 and all(FLOOD_FIFO not in n for n in names)
    report = "\n".join(report_lines({"fairness": {**s, "settings": _settings()}}))
    assert "`b-with-a-flood-fifo` | 3,000 / 300 = 10.00x (control)" in report


def _settings() -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(FairnessSettings())


def test_checks_catch_a_refusal_without_its_hints_and_a_different_b_load() -> None:
    flood = _flood(1.0, 1, 3)
    flood["records"].append(_refused(A, 5.0, hints=False))
    flood["records"].append(_r(B, 9.0, 9.5))  # B offered 6 here, 5 alone
    s = _summary(flood)
    checks = {c["check"]: c["ok"] for c in fairness_checks(s)}
    hints = ("every RESOURCE_EXHAUSTED carries RetryInfo and the grpc-retry-pushback-ms "
             "trailer")
    assert checks[f"fairness {FLOOD} {B}: {hints}"]
    assert not checks[f"fairness {FLOOD} {A}: {hints}"]
    assert not checks["fairness B offered the same requests in every phase it ran in"]
    assert checks[f"fairness {CAPACITY} {A}: every request OK within its deadline"]
    assert checks[f"fairness {B_ALONE} {B}: every request OK within its deadline"]
    assert fairness_checks(None) == [] and fairness_targets(None) == []


def test_the_report_shows_every_tenant_and_the_misses() -> None:
    s = _summary(_flood(b_ttft_scale=2.0, b_refused=2, a_ok=3))
    s["cpu_s"] = {FLOOD: {"gateway": 5.5, "redis": 0.0}}
    lines = report_lines({"fairness": {**s, "settings": _settings()}})
    text = "\n".join(lines)
    assert lines[0] == "## Fair share between tenants"
    assert f"| `{FLOOD}` | {A} | 5.00 req/s |" in text
    assert f"| `{FLOOD}` | {B} | 0.50 req/s | 5 | 3 |" in text
    assert "**missed**" in text and "RESOURCE_EXHAUSTED 2" in text
    assert f"`{FLOOD}`: gateway 0.50." in text
    assert report_lines({}) == []


def test_b_rate_is_the_flag_or_a_share_of_what_the_probe_completed() -> None:
    assert b_rate_of({"b_rate": 1.5, "b_share": 0.5}, 6.0) == 1.5
    assert b_rate_of({"b_rate": 0, "b_share": 1 / 3}, 6.0) == pytest.approx(2.0)


class _FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    async def call(self, prompt: Prompt, t0: float, tenant: str) -> dict[str, Any]:
        at = time.perf_counter() - t0
        self.calls.append((tenant, at))
        return {"tenant": tenant, "start": at, "end": at, "index": prompt.index}


def test_the_open_loop_sends_both_tenants_from_one_start_and_b_the_same_each_time() -> None:
    prompts = [Prompt(i, f"p{i}", (i,)) for i in range(12)]

    def run(streams: list[Any]) -> list[dict[str, Any]]:
        client = _FakeClient()
        return asyncio.run(open_loops(client, streams))  # type: ignore[arg-type]

    alone = run([(B, prompts[:4], 20.0, 7)])
    both = run([(B, prompts[:4], 20.0, 7), (A, prompts[4:], 80.0, 8)])
    assert [r["tenant"] for r in alone] == [B] * 4
    assert sorted(r["tenant"] for r in both) == [A] * 8 + [B] * 4
    assert [r["start"] for r in both] == sorted(r["start"] for r in both)
    b_alone = [r["start"] for r in alone]
    b_both = [r["start"] for r in both if r["tenant"] == B]
    assert b_both == pytest.approx(b_alone, abs=0.03)
    # each tenant's arrivals span count / rate from the same start: A's 8 at 80/s end at 0.1 s
    assert max(r["start"] for r in both if r["tenant"] == A) == pytest.approx(0.1, abs=0.03)
    assert max(b_both) == pytest.approx(0.2, abs=0.03)


def test_the_flags_build_the_fairness_settings() -> None:
    args = parser().parse_args(
        ["run", "--model-dir", "/tmp", "--fairness", "--fairness-capacity", "3",
         "--fairness-b-rate", "0.7", "--fairness-a-multiple", "12", "--fairness-fifo",
         "--no-fairness-no-admission", "--fairness-seconds", "20"])
    f = settings_from(args).fairness
    assert f == FairnessSettings(capacity=3, b_rate=0.7, a_multiple=12.0, fifo=True,
                                 no_admission=False, seconds=20.0)
    assert settings_from(parser().parse_args(["run", "--model-dir", "/tmp"])).fairness is None
    with pytest.raises(ValueError):
        FairnessSettings(a_multiple=0)
