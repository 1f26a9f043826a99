"""The spread of each ratio over repeated passes, so a 2% difference can be told from noise.

With `--repeat N` the c=1 and c=32 phases run N times on every backend: once in the first
pass (with the other phases), then in N - 1 further passes, backends in reversed order every
other pass. Each pass pairs the backends' runs that were closest in time, so a ratio is
computed per pass (subject / baseline of that pass's metrics) and then summarized: median,
min, max, the range as a percentage of the median, and whether every pass puts the ratio on
the same side of 1 (`side`: "above", "below" or "both"). A difference smaller than the range
is not one the run can tell from noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bench.metrics import RATIO_METRICS, lookup, ratio

#: (subject, baseline) pairs compared, in the report's order.
PAIRS: tuple[tuple[str, str], ...] = (
    ("fleet", "vllm"), ("fleet", "vllm-server"), ("fleet", "vllm-grpc"), ("fleet", "smg"),
    ("vllm-server", "vllm"), ("vllm-grpc", "vllm"), ("smg", "vllm-grpc"),
    ("fleet-traced", "fleet"),
)
#: Metrics whose spread per backend is reported (label, path into a phase's metrics).
BACKEND_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("output tok/s", ("output_throughput",)), ("TTFT p50", ("ttft_ms", "p50")),
    ("TTFT p99", ("ttft_ms", "p99")), ("ITL p90", ("itl_ms", "p90")),
)


def summarize(values: Sequence[float | None]) -> dict[str, Any] | None:
    """median / min / max / mean / stdev / range % of the finite values (None: none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    median = statistics.median(vals)
    low, high = min(vals), max(vals)
    return {
        "n": len(vals), "values": vals, "median": median, "min": low, "max": high,
        "mean": statistics.fmean(vals),
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "range_pct": (high - low) / abs(median) * 100 if median else None,
    }


def side_of_one(summary: dict[str, Any] | None) -> str | None:
    """Where every pass put a ratio: "above" 1, "below" 1, or "both" (None: no values)."""
    if not summary:
        return None
    if summary["min"] > 1.0:
        return "above"
    if summary["max"] < 1.0:
        return "below"
    return "both"


def ratio_spread(subject: Sequence[dict[str, Any] | None],
                 baseline: Sequence[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    """Per RATIO_METRICS label: the summary of subject / baseline over the passes in which
    both ran (pass i of one with pass i of the other)."""
    out: dict[str, dict[str, Any]] = {}
    for label, path, _ in RATIO_METRICS:
        values = [ratio(lookup(a, path), lookup(b, path))
                  for a, b in zip(subject, baseline) if a is not None and b is not None]
        summary = summarize(values)
        if summary is not None:
            out[label] = {**summary, "side": side_of_one(summary)}
    return out


def added_spread(subject: Sequence[dict[str, Any] | None],
                 baseline: Sequence[dict[str, Any] | None], metric: str = "ttft_ms"
                 ) -> dict[str, dict[str, Any]]:
    """Per percentile: the summary of subject minus baseline (ms) over the shared passes."""
    out: dict[str, dict[str, Any]] = {}
    for key in ("p50", "p99"):
        summary = summarize([a[metric][key] - b[metric][key]
                             for a, b in zip(subject, baseline)
                             if a is not None and b is not None])
        if summary is not None:
            out[key] = summary
    return out


def backend_spread(passes: Sequence[dict[str, Any] | None]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, path in BACKEND_METRICS:
        summary = summarize([lookup(m, path) for m in passes if m is not None])
        if summary is not None:
            out[label] = summary
    return out


def spreads(per_pass: dict[str, dict[str, list[dict[str, Any] | None]]],
            phases: Sequence[str]) -> dict[str, Any]:
    """`per_pass[backend][phase]` = that phase's metrics in each pass (None where it did not
    run). Returns per phase: each backend's own spread, and each pair's ratio spread and
    added-TTFT spread."""
    out: dict[str, Any] = {}
    for phase in phases:
        entry: dict[str, Any] = {"backends": {}, "ratios": {}, "added_ttft_ms": {}}
        for backend, by_phase in per_pass.items():
            passes = by_phase.get(phase) or []
            if any(m is not None for m in passes):
                entry["backends"][backend] = backend_spread(passes)
        for subject, base in PAIRS:
            a = (per_pass.get(subject) or {}).get(phase)
            b = (per_pass.get(base) or {}).get(phase)
            if not a or not b:
                continue
            ratios = ratio_spread(a, b)
            if ratios:
                entry["ratios"][f"{subject}/{base}"] = ratios
                entry["added_ttft_ms"][f"{subject}-{base}"] = added_spread(a, b)
        out[phase] = entry
    return out
