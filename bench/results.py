"""From raw runner output to the results document: metrics, comparisons, targets, checks.

Everything the report says is computed here, once, from the records of one run; the report
and the plots only read the document (`results.json`), so they can be re-rendered later.
"""

from __future__ import annotations

from typing import Any

from bench.metrics import added_latency, extra_distributions, phase_metrics, ratios
from bench.records import RequestRecord
from bench.settings import BACKEND_LABELS, BenchSettings, Phase

SCHEMA = "codellama-fleet-bench/1"
#: Targets of issue 5 (reported, never enforced by tests).
TARGET_THROUGHPUT_VS_VLLM = 0.95
TARGET_ADDED_TTFT_P50_MS = 5.0
TARGET_ADDED_TTFT_P99_MS = 15.0
TARGET_ITL_P90_RATIO = 1.05
TARGET_ADMISSION_PER_CORE = 4000.0
#: Busy cores of processes outside the benchmark above which a phase counts as disturbed.
QUIET_CORES = 0.25


def request_summary(record: RequestRecord) -> dict[str, Any]:
    return {
        "index": record.index, "start": round(record.start, 4),
        "success": record.success, "ttft": round(record.ttft, 6),
        "latency": round(record.latency, 6), "output_tokens": record.output_tokens,
        "prompt_tokens": record.prompt_tokens, "chunks": len(record.chunk_tokens),
        "finish_reason": record.finish_reason, "error": record.error[:300],
        "extra": {k: round(v, 3) for k, v in record.extra.items()},
    }


def _phase_result(phase: Phase, raw: dict[str, Any], cpu_s: dict[str, float] | None,
                  settings: BenchSettings) -> dict[str, Any]:
    records = [RequestRecord.from_json(r) for r in raw["records"]]
    metrics = phase_metrics(records, raw["duration_s"], settings.slo)
    out_tokens = metrics["total_output_tokens"]
    result: dict[str, Any] = {
        "spec": {"kind": phase.kind, "concurrency": phase.concurrency, "rate": phase.rate,
                 "num_requests": phase.num_requests, "description": phase.describe()},
        "metrics": metrics,
        "extra_ms": extra_distributions(records),
        "attempts": raw.get("attempts", []),
        "requests": [request_summary(r) for r in records],
    }
    if cpu_s:
        result["cpu_s"] = cpu_s
        result["cpu_ms_per_output_token"] = {
            k: (v * 1000 / out_tokens if out_tokens else None) for k, v in cpu_s.items()}
        result["cpu_utilization"] = {k: v / raw["duration_s"] for k, v in cpu_s.items()}
    return result


def backend_result(name: str, raw: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    runner = raw["runner"]
    phases = {}
    for phase in settings.phases:
        if phase.name in runner["phases"]:
            phases[phase.name] = _phase_result(phase, runner["phases"][phase.name],
                                               raw.get("cpu_s", {}).get(phase.name), settings)
    result: dict[str, Any] = {
        "label": BACKEND_LABELS[name],
        "startup_s": {**raw.get("startup_s", {}), "client_ready": runner.get("startup_s")},
        "verify": runner.get("verify", {}),
        "components": raw.get("components", {}),
        "machine_before": raw.get("machine_before", {}),
        "phases": phases,
    }
    if raw.get("profile"):
        result["profile"] = raw["profile"]
    return result


def compare(backends: dict[str, Any], settings: BenchSettings) -> dict[str, Any]:
    pairs = (("fleet", "vllm"), ("fleet", "vllm-server"), ("vllm-server", "vllm"))
    out: dict[str, Any] = {}
    for phase in settings.phases:
        entry: dict[str, Any] = {}
        for subject, base in pairs:
            a = backends.get(subject, {}).get("phases", {}).get(phase.name)
            b = backends.get(base, {}).get("phases", {}).get(phase.name)
            if a and b:
                entry[f"{subject}/{base}"] = ratios(a["metrics"], b["metrics"])
                entry[f"{subject}-{base} ttft_ms"] = added_latency(a["metrics"], b["metrics"])
                entry[f"{subject}-{base} itl_ms"] = added_latency(a["metrics"], b["metrics"],
                                                                  "itl_ms")
        if entry:
            out[phase.name] = entry
    return out


def _target(name: str, value: float | None, limit: str, passed: bool | None,
            detail: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "passed": passed, "detail": detail}


def targets(results: dict[str, Any], settings: BenchSettings) -> list[dict[str, Any]]:
    comparisons = results["comparisons"]
    closed = [p for p in settings.phases if p.kind == "closed"]
    out: list[dict[str, Any]] = []
    if closed:
        top = max(closed, key=lambda p: p.concurrency)
        cmp = comparisons.get(top.name, {})
        v = cmp.get("fleet/vllm", {}).get("output tok/s")
        out.append(_target(f"fleet output tok/s at concurrency {top.concurrency} vs vLLM alone",
                           v, f">= {TARGET_THROUGHPUT_VS_VLLM}x",
                           None if v is None else v >= TARGET_THROUGHPUT_VS_VLLM))
        v = cmp.get("fleet/vllm-server", {}).get("output tok/s")
        out.append(_target(f"fleet output tok/s at concurrency {top.concurrency} vs vLLM server",
                           v, ">= 1.0x", None if v is None else v >= 1.0))
        low = min(closed, key=lambda p: p.concurrency)
        added = comparisons.get(low.name, {}).get("fleet-vllm ttft_ms")
        for key, limit in (("p50", TARGET_ADDED_TTFT_P50_MS), ("p99", TARGET_ADDED_TTFT_P99_MS)):
            v = added[key] if added else None
            out.append(_target(f"added TTFT {key} over vLLM alone at concurrency "
                               f"{low.concurrency} (ms)", v, f"< {limit:g} ms",
                               None if v is None else v < limit))
        for phase in closed:
            v = comparisons.get(phase.name, {}).get("fleet/vllm", {}).get("ITL p90")
            out.append(_target(f"ITL p90 vs vLLM alone at concurrency {phase.concurrency}", v,
                               f"<= {TARGET_ITL_P90_RATIO}x",
                               None if v is None else v <= TARGET_ITL_P90_RATIO))
    admission = results.get("admission") or {}
    grpc = admission.get("grpc") or {}
    v = grpc.get("requests_per_gateway_cpu_s")
    out.append(_target("gateway admission, validated + enqueued requests per gateway CPU-second "
                       "(gRPC)", v, f">= {TARGET_ADMISSION_PER_CORE:g}/s",
                       None if v is None else v >= TARGET_ADMISSION_PER_CORE,
                       "StreamComplete until the gateway's first message, then cancel"))
    inproc = admission.get("inprocess") or {}
    v = inproc.get("requests_per_cpu_s")
    out.append(_target("gateway admission path in-process (no gRPC), requests per CPU-second",
                       v, f">= {TARGET_ADMISSION_PER_CORE:g}/s",
                       None if v is None else v >= TARGET_ADMISSION_PER_CORE,
                       "InferenceServicer._admit awaited directly"))
    return out


def checks(results: dict[str, Any], settings: BenchSettings) -> list[dict[str, Any]]:
    """Consistency of the run: lengths held, nothing failed, percentiles ordered, ..."""
    out: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        out.append({"check": name, "ok": bool(ok), "detail": detail})

    want_in, want_out = settings.workload.input_len, settings.workload.output_len
    for backend, data in results["backends"].items():
        for phase, pr in data["phases"].items():
            reqs = pr["requests"]
            failed = [r for r in reqs if not r["success"]]
            check(f"{backend} {phase}: every request succeeded", not failed,
                  f"{len(failed)} failed" + (f", e.g. {failed[0]['error']}" if failed else ""))
            wrong_out = [r for r in reqs if r["success"] and r["output_tokens"] != want_out]
            check(f"{backend} {phase}: output tokens == {want_out}", not wrong_out,
                  f"{len(wrong_out)} requests differ" + (
                      f", e.g. {wrong_out[0]['output_tokens']} tokens "
                      f"({wrong_out[0]['finish_reason']})" if wrong_out else ""))
            wrong_in = [r for r in reqs if r["success"] and r["prompt_tokens"] != want_in]
            check(f"{backend} {phase}: prompt tokens == {want_in}", not wrong_in,
                  f"{len(wrong_in)} requests differ")
            m = pr["metrics"]
            ordered = all(m[k]["p50"] <= m[k]["p90"] <= m[k]["p99"] <= m[k]["max"] + 1e-9
                          for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"))
            check(f"{backend} {phase}: percentiles ordered", ordered)
            other = (pr.get("cpu_utilization") or {}).get("other processes")
            if other is not None:
                check(f"{backend} {phase}: the machine was otherwise idle "
                      f"(other processes < {QUIET_CORES} cores)", other < QUIET_CORES,
                      f"other processes kept {other:.2f} cores busy")
            expected_tokens = m["completed"] * want_out
            check(f"{backend} {phase}: total output tokens == completed x output_len",
                  m["total_output_tokens"] == expected_tokens,
                  f"{m['total_output_tokens']} vs {expected_tokens}")
        if backend == "fleet":
            verify = data.get("verify", {})
            check("fleet: PreviewPrompt token ids == workload ids for every prompt used",
                  verify.get("checked", 0) == verify.get("prompts_used", -1),
                  f"{verify.get('checked', 0)} of {verify.get('prompts_used')} checked")
    grpc = (results.get("admission") or {}).get("grpc")
    if grpc:
        check("admission (gRPC): every acknowledged request is in the Celery queue",
              grpc["enqueued_in_redis"] == grpc["admitted"],
              f"{grpc['enqueued_in_redis']} queued, {grpc['admitted']} acknowledged")
    inproc = (results.get("admission") or {}).get("inprocess")
    if inproc and "error" not in inproc:
        check("admission (in-process): every admitted request is in the Celery queue",
              inproc["enqueued_in_redis"] == inproc["admitted"],
              f"{inproc['enqueued_in_redis']} queued, {inproc['admitted']} admitted")
    return out


def assemble(settings: BenchSettings, raw: dict[str, Any], machine: dict[str, Any],
             workload: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    backends = {name: backend_result(name, raw[name], settings)
                for name in settings.backends if name in raw}
    results: dict[str, Any] = {
        "schema": SCHEMA,
        **timing,
        "machine": machine,
        "settings": settings.to_json(),
        "workload": workload,
        "backends": backends,
        "admission": raw.get("admission"),
    }
    results["comparisons"] = compare(backends, settings)
    results["targets"] = targets(results, settings)
    results["checks"] = checks(results, settings)
    return results

