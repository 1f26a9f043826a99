"""The chaos run's figures, from the judged calls, their result streams and the fault record.

A re-run is a STARTED event of attempt 2 or later in a request's stream. It is charged to the
latest fault injected between the call's start and that STARTED; its redelivery latency is the
time from the fault (the signal, or Redis's SIGKILL) to the STARTED, both on this machine's
clock (a stream entry id's milliseconds are Redis's clock).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.chaos_faults import FaultKind, FaultRecord
from bench.chaos_load import Captured
from bench.chaos_logs import RerunCause
from bench.chaos_verdicts import GOOD, Judged, Verdict


@dataclass(frozen=True)
class Rerun:
    request_id: str
    attempt: int
    started_ms: int
    cause: str  # the gateway's reason kind (chaos_logs.RerunCause.kind), or "unlogged"
    fault: int | None  # index into the fault record; None: no fault explains it
    latency_ms: float | None  # fault -> the re-run's STARTED
    detection_ms: float | None  # fault -> the gateway deciding to re-run


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


def _latency_summary(values: Sequence[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99), "max_ms": max(values) if values else None}


def _explaining_fault(faults: Sequence[FaultRecord], since: float, until: float,
                      cause: RerunCause | None) -> int | None:
    """The latest fault in [since, until] that can have caused the re-run: for a worker whose
    heartbeats stopped, a fault of that worker or Redis's restart; otherwise any fault."""
    for i in range(len(faults) - 1, -1, -1):
        f = faults[i]
        if not since <= f.at_unix <= until:
            continue
        if cause is not None and cause.worker and f.kind is not FaultKind.REDIS \
                and f.worker != cause.worker:
            continue
        return i
    return None


def reruns(captured: Sequence[Captured], faults: Sequence[FaultRecord],
           causes: dict[tuple[str, int], RerunCause]) -> list[Rerun]:
    found = []
    for item in captured:
        out = item.outcome
        for entry in item.stream:
            if entry.kind != "started" or entry.attempt < 2:
                continue
            cause = causes.get((out.call.request_id, entry.attempt))
            until = cause.logged_unix if cause else entry.ms / 1000
            index = _explaining_fault(faults, out.started_unix - 0.5, until, cause)
            at_ms = faults[index].at_unix * 1000 if index is not None else None
            found.append(Rerun(
                out.call.request_id, entry.attempt, entry.ms,
                cause.kind if cause else "unlogged", index,
                entry.ms - at_ms if at_ms is not None else None,
                cause.logged_unix * 1000 - at_ms if at_ms is not None and cause else None))
    return found


def _hit_on_victim(captured: Sequence[Captured], fault: FaultRecord) -> list[str]:
    """Requests the victim was generating when the fault struck (started there, not ended)."""
    at_ms, hit = fault.at_unix * 1000, []
    for item in captured:
        started = {e.attempt for e in item.stream if e.kind == "started"
                   and e.worker == fault.worker and e.ms <= at_ms}
        ended = {e.attempt for e in item.stream if e.kind in ("final", "error")
                 and e.ms <= at_ms}
        if started - ended and item.outcome.ended_unix >= fault.at_unix:
            hit.append(item.outcome.call.request_id)
    return hit


def _fault_row(index: int, fault: FaultRecord, captured: Sequence[Captured],
               judged: Sequence[Judged], found: Sequence[Rerun], t0: float) -> dict[str, Any]:
    charged = [r for r in found if r.fault == index]
    failed = [j for j in judged if j.verdict is not Verdict.OK and j.faults
              and j.faults[-1] == index]
    row: dict[str, Any] = {
        "index": index, "kind": str(fault.kind), "worker": fault.worker,
        "at_s": round(fault.at_unix - t0, 2),
        "recovered_after_s": round(fault.recovered_unix - fault.at_unix, 2),
        "calls_in_flight": fault.in_flight_calls, "victim_tasks": fault.victim_tasks,
        "reruns": len(charged),
        "redelivery": _latency_summary([r.latency_ms for r in charged
                                        if r.latency_ms is not None]),
        "detection": _latency_summary([r.detection_ms for r in charged
                                       if r.detection_ms is not None]),
        "failed_calls": len(failed),
        "failed_in_flight": sum(j.outcome.started_unix < fault.at_unix for j in failed),
        "failed_statuses": dict(Counter(j.outcome.code for j in failed)),
        **fault.detail,
    }
    if fault.kind is not FaultKind.REDIS:
        row["generating_on_victim"] = len(_hit_on_victim(captured, fault))
    return row


def figures(judged: Sequence[Judged], captured: Sequence[Captured],
            faults: Sequence[FaultRecord], causes: dict[tuple[str, int], RerunCause],
            t0: float) -> dict[str, Any]:
    verdicts = Counter(str(j.verdict) for j in judged)
    found = reruns(captured, faults, causes)
    by_kind: dict[str, Counter[str]] = {"unary": Counter(), "streaming": Counter()}
    for j in judged:
        by_kind["streaming" if j.outcome.call.streaming else "unary"][j.outcome.code] += 1
    attempts = Counter(max((e.attempt for e in c.stream if e.kind == "started"), default=0)
                       for c in captured)
    duplicate_finals = [c.outcome.call.request_id for c in captured
                        if len({e.attempt for e in c.stream if e.kind == "final"}) > 1]
    rerun_ids = {r.request_id for r in found}
    ok_ids = {j.outcome.call.request_id for j in judged if j.verdict is Verdict.OK}
    def of_kind(kind: FaultKind, attr: str) -> list[float]:
        return [getattr(r, attr) for r in found if r.fault is not None
                and faults[r.fault].kind is kind and getattr(r, attr) is not None]

    latencies = {str(k): _latency_summary(of_kind(k, "latency_ms")) for k in FaultKind}
    detection = {str(k): _latency_summary(of_kind(k, "detection_ms")) for k in FaultKind}
    return {
        "calls": len(judged),
        "by_status": dict(Counter(j.outcome.code for j in judged).most_common()),
        "by_status_and_kind": {k: dict(v.most_common()) for k, v in by_kind.items()},
        "by_verdict": dict(verdicts.most_common()),
        "ok_share": round(verdicts[str(Verdict.OK)] / max(len(judged), 1), 4),
        "lost": verdicts[str(Verdict.LOST)],
        "wrong_or_spliced": verdicts[str(Verdict.WRONG)] + verdicts[str(Verdict.SPLICED)],
        "untrue_or_not_retryable": (verdicts[str(Verdict.UNTRUE)]
                                    + verdicts[str(Verdict.NOT_RETRYABLE)]),
        "rerun_requests": len(rerun_ids),
        "rerun_requests_ok": len(rerun_ids & ok_ids),
        "highest_attempt_started": {str(k): v for k, v in sorted(attempts.items())},
        "redelivery": latencies,
        "detection": detection,
        "rerun_causes": dict(Counter(r.cause for r in found).most_common()),
        "unexplained_reruns": [
            {"request_id": r.request_id, "attempt": r.attempt, "cause": r.cause,
             "reason": getattr(causes.get((r.request_id, r.attempt)), "reason", ""),
             "at_s": round(r.started_ms / 1000 - t0, 2)}
            for r in found if r.fault is None],
        "duplicate_executions": duplicate_finals,
        "streams_unread": sum(not c.stream_read for c in captured),
        "faults": [_fault_row(i, f, captured, judged, found, t0) for i, f in enumerate(faults)],
        "failures": [{"request_id": j.outcome.call.request_id,
                      "kind": "streaming" if j.outcome.call.streaming else "unary",
                      "code": j.outcome.code, "details": j.outcome.details,
                      "verdict": str(j.verdict), "reason": j.reason,
                      "delivered_tokens": len(j.outcome.token_ids),
                      "max_tokens": j.outcome.call.spec.max_tokens,
                      "faults": list(j.faults)}
                     for j in judged if j.verdict is not Verdict.OK],
        "passed": all(j.verdict in GOOD for j in judged),
        "calls_detail": [_call_row(j, t0) for j in judged],
    }


def _call_row(j: Judged, t0: float) -> dict[str, Any]:
    out = j.outcome
    return {"request_id": out.call.request_id, "streaming": out.call.streaming,
            "max_tokens": out.call.spec.max_tokens, "code": out.code, "verdict": str(j.verdict),
            "start_s": round(out.started_unix - t0, 3), "end_s": round(out.ended_unix - t0, 3),
            "tokens": len(out.token_ids), "worker": out.worker}
