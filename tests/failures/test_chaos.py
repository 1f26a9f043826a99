"""The chaos suite's short variant: a fleet of its own (redis-server, two vLLM workers, a
gateway) takes 40 requests, half streaming, while a worker is SIGKILLed twice, Redis is killed
and restarted and a worker is drained with SIGTERM. No call may be lost, none may return
duplicated, missing or spliced tokens, and every failure must be retryable with a true message.
The full run (500 requests, 5 kills) is `python -m bench.chaos` (README, Reliability).

The other tests check the checks: each verdict rule, on made-up outcomes, can fail.

It is the first module of tests/failures, so its engines run before the package's shared fleet
starts (conftest.py starts that one on first use).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from bench.chaos import ChaosSettings, run_chaos
from bench.chaos_calls import Call, Outcome, Spec
from bench.chaos_faults import FaultKind, FaultRecord, plan
from bench.chaos_figures import figures, reruns
from bench.chaos_load import Captured, StreamEntry
from bench.chaos_logs import RerunCause
from bench.chaos_report import render
from bench.chaos_verdicts import Reference, Verdict, judge

SPEC = Spec("def f():", 5)
REF = Reference((11, 12, 13, 14, 15), "abcde")
T0 = 1_000_000.0


def _outcome(code: str = "OK", tokens: tuple[int, ...] = REF.token_ids, text: str = REF.text,
             details: str = "", streaming: bool = True, start: float = T0,
             end: float = T0 + 2) -> Outcome:
    return Outcome(Call(0, "chaos-x-0000", SPEC, streaming), code=code, details=details,
                   token_ids=list(tokens), text=text, completion_tokens=len(tokens),
                   started_unix=start, ended_unix=end)


def _fault(kind: FaultKind, at: float, worker: str = "chaos-w1") -> FaultRecord:
    return FaultRecord(kind, 0, worker=worker if kind is not FaultKind.REDIS else "",
                       at_unix=at, recovered_unix=at + 1)


def test_an_ok_answer_must_be_the_reference_exactly() -> None:
    assert judge(_outcome(), REF, [], 120).verdict is Verdict.OK
    doubled = judge(_outcome(tokens=(11, 12, 12, 13, 14, 15), text="abbcde"), REF, [], 120)
    assert doubled.verdict is Verdict.WRONG, doubled
    short_text = judge(_outcome(text="abcd"), REF, [], 120)
    assert short_text.verdict is Verdict.WRONG


def test_a_failed_stream_must_have_delivered_a_prefix_of_the_reference() -> None:
    lost = "the worker serving it was lost after 2 tokens of choice 0; the request may be retried"
    kill = [_fault(FaultKind.SIGKILL, T0 + 1)]
    prefix = judge(_outcome("UNAVAILABLE", (11, 12), "ab", f"request x: {lost}"), REF, kill, 120)
    assert prefix.verdict is Verdict.RETRYABLE, prefix
    spliced = judge(_outcome("UNAVAILABLE", (11, 99), "a?", f"request x: {lost}"), REF, kill,
                    120)
    assert spliced.verdict is Verdict.SPLICED


def test_a_failure_message_must_be_true_of_the_faults() -> None:
    redis_down = "queue backend (Redis) unreachable for 0.2 s (ConnectionError); retry later"
    assert judge(_outcome("UNAVAILABLE", (), "", redis_down), REF,
                 [_fault(FaultKind.REDIS, T0 + 1)], 120).verdict is Verdict.RETRYABLE
    assert judge(_outcome("UNAVAILABLE", (), "", redis_down), REF,
                 [_fault(FaultKind.SIGKILL, T0 + 1)], 120).verdict is Verdict.UNTRUE
    miscounted = "lost after 3 tokens of choice 0, and the re-run did not reproduce them"
    assert judge(_outcome("UNAVAILABLE", (11, 12), "ab", miscounted), REF,
                 [_fault(FaultKind.SIGKILL, T0 + 1)], 120).verdict is Verdict.UNTRUE
    early = judge(_outcome("DEADLINE_EXCEEDED", (), "", "did not finish within its deadline"),
                  REF, [], 120)
    assert early.verdict is Verdict.UNTRUE
    assert judge(_outcome("INTERNAL", (), "", "boom"), REF, [], 120).verdict \
        is Verdict.NOT_RETRYABLE


def test_no_answer_by_the_deadline_is_lost() -> None:
    bare = _outcome("DEADLINE_EXCEEDED", (), "", "Deadline Exceeded")
    bare.local_deadline = True
    assert judge(bare, REF, [], 120).verdict is Verdict.LOST


def test_a_rerun_is_charged_to_the_fault_of_the_worker_that_served_it() -> None:
    out = _outcome()
    stream = [StreamEntry(int(T0 * 1000) + 100, 1, "started", "chaos-w2"),
              StreamEntry(int(T0 * 1000) + 4600, 2, "started", "chaos-w1")]
    kill_w1 = _fault(FaultKind.SIGKILL, T0 + 1, worker="chaos-w1")
    lost_w2 = {("chaos-x-0000", 2): RerunCause("worker chaos-w2 stopped sending heartbeats "
                                                "while serving attempt 1", T0 + 4.5)}
    (spurious,) = reruns([Captured(out, stream, True)], [kill_w1], lost_w2)
    assert spurious.fault is None, "w1's death does not explain w2's lost heartbeats"
    (charged,) = reruns([Captured(out, stream, True)], [_fault(FaultKind.SIGKILL, T0 + 1,
                                                               worker="chaos-w2")], lost_w2)
    assert charged.fault == 0 and charged.latency_ms == pytest.approx(3600, abs=1)


def test_the_plan_puts_each_fault_in_its_own_segment() -> None:
    schedule = plan(40, 2, random.Random(7))
    assert sum(schedule.segments) == 40 and len(schedule.segments) == 5
    assert sorted(f.kind for f in schedule.faults) == sorted(
        [FaultKind.SIGKILL, FaultKind.SIGKILL, FaultKind.DRAIN, FaultKind.REDIS])
    ends = [sum(schedule.segments[:i + 1]) for i in range(4)]
    assert all(ends[f.segment] - schedule.segments[f.segment] <= f.after_ended < ends[f.segment]
               for f in schedule.faults)


def test_the_report_says_failed_when_a_call_failed() -> None:
    judged = [judge(_outcome(), REF, [], 120),
              judge(_outcome("INTERNAL", (), "", "boom"), REF, [], 120)]
    results = figures(judged, [Captured(j.outcome) for j in judged], [], {}, T0)
    results.update({"settings": {"requests": 2, "kills": 0, "concurrency": 1, "timeout_s": 120,
                                 "seed": 1},
                    "fleet": {"liveness_s": 3, "heartbeat_s": 0.5, "drain_grace_s": 30},
                    "references": [{"prompt": SPEC.prompt, "max_tokens": 5}], "errors": [],
                    "reference_failures": [], "phases": {}, "total_s": 1.0,
                    "worker_starts_s": [1.0]})
    assert not results["passed"]
    text = render(results)
    assert "**FAILED**" in text and "1 × INTERNAL" in text


@pytest.mark.e2e
def test_a_short_chaos_run_loses_nothing_and_splices_nothing(tmp_path: Path) -> None:
    began = time.monotonic()
    results = run_chaos(ChaosSettings(requests=40, kills=2, seed=7, drain_grace_s=20,
                                      max_minutes=15), tmp_path)
    took = time.monotonic() - began
    (tmp_path / "results.json").write_text(json.dumps(results, indent=2))
    (tmp_path / "reliability.md").write_text(render(results))
    # One line per failed call, verdict and reason first: pytest would cut a list of dicts.
    failures = "\n".join(
        f"{f['request_id']} {f['kind']} {f['code']} {f['verdict']}: {f['reason']} (faults "
        f"{f['faults']}, {f['delivered_tokens']}/{f['max_tokens']} tokens) {f['details']!r}"
        for f in results["failures"]) + "\nfaults: " + json.dumps(results["faults"])
    assert results["errors"] == [], results["errors"]
    assert results["calls"] == 40
    assert results["lost"] == 0, failures
    assert results["wrong_or_spliced"] == 0, failures
    assert results["untrue_or_not_retryable"] == 0, failures
    assert results["passed"]
    kinds = [f["kind"] for f in results["faults"]]
    assert sorted(kinds) == ["redis-restart", "sigkill", "sigkill", "sigterm-drain"], kinds
    for fault in results["faults"]:
        if fault["kind"] == "sigkill":
            # What the victim was generating was re-run or failed (retryably), never dropped.
            assert fault["reruns"] + fault["failed_calls"] >= fault["generating_on_victim"]
        if fault["kind"] == "sigterm-drain":
            assert fault["exit_code"] == 0, fault
            assert fault["drain_s"] <= results["fleet"]["drain_grace_s"] + 10, fault
        if fault["kind"] == "redis-restart":
            assert fault["first_ok_call_after_s"] is not None, fault
    assert took < 15 * 60
