"""Goodput under overload, from the records of `bench.overload`.

A request is *good* when it ended OK, within its deadline, with every token it asked for.
Goodput is the good requests that finished inside the phase's window (its first `window_s`
seconds: the closed loop stops sending at the end of it, the open loop's arrivals span it),
divided by the window. Both phases thus start from an idle fleet and neither is credited with
the requests still running when the window closes, so their goodputs compare directly; the
stragglers are still counted in every other figure (statuses, tokens).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.metrics import distribution_ms

#: The issue's target: goodput at 4x the load one worker can serve stays >= 90% of capacity's.
TARGET_OVERLOAD_RATIO = 0.9
MEASURED = ("capacity", "overload", "overload-no-admission")


def is_good(record: dict[str, Any], deadline_s: float, output_len: int) -> bool:
    return (record["code"] == "OK" and record["end"] - record["start"] <= deadline_s
            and record["tokens"] == output_len)


def phase_summary(phase: dict[str, Any], deadline_s: float, output_len: int) -> dict[str, Any]:
    records, window = phase["records"], float(phase["window_s"])
    good = [r for r in records if is_good(r, deadline_s, output_len)]
    in_window = [r for r in good if r["end"] <= window]
    refused = [r for r in records if r["code"] == "RESOURCE_EXHAUSTED"]
    statuses = Counter(r["code"] for r in records)
    if len(good) < statuses.get("OK", 0):
        statuses["OK (late or short)"] = statuses["OK"] - len(good)
        statuses["OK"] = len(good)
    return {
        "window_s": window,
        "duration_s": phase["duration_s"],
        "requests": len(records),
        "offered_rps": phase.get("rate") or len(records) / window,
        "concurrency": phase.get("concurrency"),
        "ran_out_of_prompts": bool(phase.get("ran_out")),
        "good": len(good),
        "good_in_window": len(in_window),
        "goodput_rps": len(in_window) / window,
        "good_tokens_per_s": sum(r["tokens"] for r in in_window) / window,
        "statuses": dict(sorted(statuses.items())),
        "tokens_delivered": sum(r["tokens"] for r in records),
        "tokens_of_good": sum(r["tokens"] for r in good),
        "good_latency_ms": distribution_ms([r["end"] - r["start"] for r in good]),
        "good_ttft_ms": distribution_ms([r["ttft"] for r in good if r["ttft"] is not None]),
        "refusal_ms": distribution_ms([r["end"] - r["start"] for r in refused]),
        "refusals_with_pushback": sum(1 for r in refused if r["pushback_ms"] is not None),
        "refusals_with_retry_info": sum(1 for r in refused if r["retry_delay_ms"] is not None),
        "pushback_ms": distribution_ms([r["pushback_ms"] / 1000 for r in refused
                                        if r["pushback_ms"] is not None]),
        "examples": {code: next(r["detail"] for r in records if r["code"] == code)
                     for code in sorted(statuses) if code not in ("OK", "OK (late or short)")},
    }


def summarize(raw: dict[str, Any], deadline_s: float, output_len: int) -> dict[str, Any]:
    """Every measured phase's summary and the goodput ratios to the capacity phase."""
    phases = {name: phase_summary(raw["phases"][name], deadline_s, output_len)
              for name in MEASURED if name in raw.get("phases", {})}
    capacity = phases.get("capacity", {}).get("goodput_rps") or 0.0
    ratios = {name: (p["goodput_rps"] / capacity if capacity else None)
              for name, p in phases.items() if name != "capacity"}
    return {"phases": phases, "goodput_ratio": ratios,
            "overload_rate_rps": raw.get("overload_rate")}
