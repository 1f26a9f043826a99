"""Metrics of one phase, with the definitions of vLLM's benchmarks/serve.py (calculate_metrics).

- TTFT, ITL, E2EL per request as measured by `records` (ITL: every gap, pooled over requests).
- TPOT of a request = (E2EL - TTFT) / (output tokens - 1), for requests with > 1 token.
- Throughputs divide by the phase duration (first request issued -> last one finished).
- Goodput: requests/s that met every limit (TTFT <= limit and TPOT <= limit; a request with
  one output token has TPOT 0 for this purpose, as in vLLM).
- Percentiles: numpy.percentile with linear interpolation (vLLM's choice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bench.records import RequestRecord
from bench.settings import Slo

PERCENTILES = (50, 90, 99)


def distribution_ms(values_s: Sequence[float]) -> dict[str, float]:
    """mean, std, median, p50/p90/p99, min and max in milliseconds (zeros when empty)."""
    if not values_s:
        return {"count": 0, "mean": 0.0, "std": 0.0, "median": 0.0, "min": 0.0, "max": 0.0,
                **{f"p{p}": 0.0 for p in PERCENTILES}}
    ms = np.asarray(values_s, dtype=float) * 1000.0
    return {
        "count": int(ms.size),
        "mean": float(np.mean(ms)),
        "std": float(np.std(ms)),
        "median": float(np.median(ms)),
        "min": float(np.min(ms)),
        "max": float(np.max(ms)),
        **{f"p{p}": float(np.percentile(ms, p)) for p in PERCENTILES},
    }


def tpot(record: RequestRecord) -> float | None:
    """Seconds per output token after the first; None with fewer than 2 tokens."""
    if record.output_tokens <= 1:
        return None
    return (record.latency - record.ttft) / (record.output_tokens - 1)


def is_good(record: RequestRecord, slo: Slo) -> bool:
    t = tpot(record) or 0.0
    return record.ttft * 1000 <= slo.ttft_ms and t * 1000 <= slo.tpot_ms


def phase_metrics(records: Iterable[RequestRecord], duration_s: float, slo: Slo
                  ) -> dict[str, Any]:
    records = list(records)
    ok = [r for r in records if r.success]
    total_input = sum(r.prompt_tokens for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    tpots = [t for t in (tpot(r) for r in ok) if t is not None]
    good = sum(1 for r in ok if is_good(r, slo))
    chunks = sum(len(r.chunk_tokens) for r in ok)
    duration = duration_s if duration_s > 0 else float("nan")
    return {
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "duration_s": duration_s,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration,
        "request_goodput": good / duration,
        "good_requests": good,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
        "ttft_ms": distribution_ms([r.ttft for r in ok]),
        "tpot_ms": distribution_ms(tpots),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itl]),
        "e2el_ms": distribution_ms([r.latency for r in ok]),
        # 1.0 when every chunk carries one token; more when a backend bundles tokens (fewer,
        # longer ITL gaps), as vLLM's output collector does for a slow consumer.
        "tokens_per_chunk": total_output / chunks if chunks else 0.0,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
    }


def extra_distributions(records: Iterable[RequestRecord]) -> dict[str, dict[str, float]]:
    """Distributions (ms) of every backend-specific figure in the records' `extra`."""
    values: dict[str, list[float]] = {}
    for record in records:
        if record.success:
            for key, value in record.extra.items():
                values.setdefault(key, []).append(value / 1000.0)
    return {key: distribution_ms(v) for key, v in sorted(values.items())}


#: (label, path into a phase's metrics, "higher is better") for the ratio table.
RATIO_METRICS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("output tok/s", ("output_throughput",), True),
    ("requests/s", ("request_throughput",), True),
    ("goodput req/s", ("request_goodput",), True),
    ("TTFT p50", ("ttft_ms", "p50"), False),
    ("TTFT p99", ("ttft_ms", "p99"), False),
    ("TPOT p50", ("tpot_ms", "p50"), False),
    ("ITL p50", ("itl_ms", "p50"), False),
    ("ITL p90", ("itl_ms", "p90"), False),
    ("ITL p99", ("itl_ms", "p99"), False),
    ("E2EL p50", ("e2el_ms", "p50"), False),
)


def lookup(metrics: dict[str, Any], path: Sequence[str]) -> float:
    value: Any = metrics
    for key in path:
        value = value[key]
    return float(value)


def ratio(numerator: float, denominator: float) -> float | None:
    if denominator == 0 or not np.isfinite(denominator) or not np.isfinite(numerator):
        return None
    return numerator / denominator


def ratios(subject: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float | None]:
    """subject / baseline for every metric of RATIO_METRICS (one phase of two backends)."""
    return {label: ratio(lookup(subject, path), lookup(baseline, path))
            for label, path, _ in RATIO_METRICS}


def added_latency(subject: dict[str, Any], baseline: dict[str, Any], metric: str = "ttft_ms"
                  ) -> dict[str, float]:
    """subject - baseline for the mean and each percentile of `metric` (ms)."""
    keys = ("mean",) + tuple(f"p{p}" for p in PERCENTILES)
    return {k: subject[metric][k] - baseline[metric][k] for k in keys}
