"""`python -m bench.chaos`: the fleet's failure semantics under faults, through real processes.

It starts a fleet of its own (redis-server, SQLite registry, two vLLM workers of one tiny random
Code Llama-layout model, one gateway; liveness 3 s, heartbeats every 0.5 s), takes the
fault-free greedy answer of every distinct request through that fleet (unary and streaming,
which must agree), then sends N requests, half unary Complete and half StreamComplete, from a
fixed number of client threads while it SIGKILLs a worker K times, kills and restarts Redis
once and drains a worker with SIGTERM once (`bench.chaos_faults`). Each call must end OK with
exactly the reference tokens and text, or with a retryable status whose message is true
(`bench.chaos_verdicts`); none may be lost. Exit status 0 when every call passes.

    python -m bench.chaos --requests 500 --kills 5 --seed 1 --report docs/reliability.md
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.chaos_calls import Call, Outcome, Spec, run_call, specs, workload
from bench.chaos_faults import FaultInjector, FaultRecord, plan
from bench.chaos_figures import figures
from bench.chaos_fleet import MODEL, ChaosFleet, FleetTimings
from bench.chaos_load import Load
from bench.chaos_logs import rerun_causes
from bench.chaos_report import lscpu, render
from bench.chaos_verdicts import RETRYABLE, Reference, judge
from bench.machine import describe

log = logging.getLogger("bench.chaos")
REPO = Path(__file__).resolve().parents[1]
REFERENCE_TRIES = 3


@dataclass(frozen=True)
class ChaosSettings:
    requests: int = 500
    kills: int = 5
    seed: int = 1
    drain: bool = True
    redis_restart: bool = True
    distinct: int = 16
    concurrency: int = 12
    timeout_s: float = 120.0
    drain_grace_s: float = 30.0
    redis_appendonly: bool = False
    max_minutes: float = 90.0


class ReferenceMismatch(RuntimeError):
    """The fault-free fleet did not give one answer per request; the run cannot judge."""


def references(stub: Any, pool: list[Spec], tag: str, timeout_s: float
               ) -> tuple[dict[Spec, Reference], list[dict[str, str]]]:
    """Each spec called once unary and once streaming, before any fault; both must be OK, be
    `max_tokens` long and agree token for token and in text. A call that fails with a
    retryable status is tried again (up to REFERENCE_TRIES times); those failures of the
    fault-free fleet are returned too, as findings."""
    calls = [Call(i, f"chaos-ref-{tag}-{i:03d}-{'s' if streaming else 'u'}", spec, streaming)
             for i, spec in enumerate(pool) for streaming in (False, True)]

    def settled(call: Call) -> tuple[Outcome, list[Outcome]]:
        failed = []
        for attempt in range(REFERENCE_TRIES):
            out = run_call(stub, MODEL, replace(call, request_id=f"{call.request_id}-{attempt}"),
                           timeout_s)
            if out.code == "OK" or out.code not in RETRYABLE:
                break
            failed.append(out)
        return out, failed

    with ThreadPoolExecutor(max_workers=8) as threads:
        settled_calls = list(threads.map(settled, calls))
    found: dict[Spec, Reference] = {}
    for out, _ in settled_calls:
        spec = out.call.spec
        if out.code != "OK" or len(out.token_ids) != spec.max_tokens:
            raise ReferenceMismatch(f"reference call {out.call.request_id} ended {out.code} "
                                    f"{out.details!r} with {len(out.token_ids)} tokens")
        ref = Reference(tuple(out.token_ids), out.text)
        if found.setdefault(spec, ref) != ref:
            raise ReferenceMismatch(f"the fault-free unary and streaming answers to {spec} "
                                    "differ")
    failures = [{"request_id": f.call.request_id, "code": f.code, "details": f.details}
                for _, failed in settled_calls for f in failed]
    return found, failures


def _probe(stub: Any, spec: Spec, ref: Reference, tag: str) -> Callable[[], bool]:
    counter = iter(range(10**6))

    def probe() -> bool:
        call = Call(-1, f"chaos-probe-{tag}-{next(counter):03d}", spec, False)
        out = run_call(stub, MODEL, call, 20.0)
        return out.code == "OK" and tuple(out.token_ids) == ref.token_ids

    return probe


def _drive(fleet: ChaosFleet, settings: ChaosSettings, calls: list[Call],
           refs: dict[Spec, Reference], rng: random.Random, tag: str,
           deadline: float) -> tuple[Load, list[FaultRecord], list[str]]:
    stub = fleet.harness.stub()
    schedule = plan(settings.requests, settings.kills, rng, drain=settings.drain,
                    redis_restart=settings.redis_restart)
    load = Load(calls, lambda call: run_call(stub, MODEL, call, settings.timeout_s),
                fleet.redis_url, concurrency=settings.concurrency, timeout_s=settings.timeout_s)
    shortest = min(refs, key=lambda s: s.max_tokens)
    injector = FaultInjector(fleet, load, rng, _probe(stub, shortest, refs[shortest], tag))
    records: list[FaultRecord] = []
    errors: list[str] = []
    load.start()
    load.release(schedule.segments[0])
    for planned in schedule.faults:
        if not load.wait_ended(planned.after_ended, deadline - time.monotonic()):
            errors.append(f"time ran out before fault {planned.kind} of segment "
                          f"{planned.segment}")
            break
        time.sleep(planned.delay_s)
        log.info("injecting %s (segment %d, %d calls ended, %d in flight)", planned.kind,
                 planned.segment, load.ended, load.in_flight)
        try:
            records.append(injector.inject(planned, load.in_flight))
        except Exception as exc:  # the run still judges what it has, and fails
            log.exception("fault %s failed", planned.kind)
            errors.append(f"fault {planned.kind} of segment {planned.segment} failed: "
                          f"{type(exc).__name__}: {exc}")
            load.release(len(calls))
            break
        load.release(schedule.segments[planned.segment + 1])
    if not load.wait_ended(len(calls), deadline - time.monotonic()):
        errors.append(f"time ran out with {len(calls) - load.ended} calls still running")
    load.close()
    return load, records, errors


def run_chaos(settings: ChaosSettings, work_dir: Path) -> dict[str, Any]:
    """One chaos run in `work_dir` (process logs in `work_dir/logs`); returns the results."""
    rng = random.Random(settings.seed)
    tag = f"{settings.seed}-{time.strftime('%H%M%S')}"
    pool = specs(settings.distinct, rng)
    calls = workload(settings.requests, pool, rng, tag)
    timings = FleetTimings(drain_grace_s=settings.drain_grace_s)
    fleet = ChaosFleet(work_dir, timings, redis_appendonly=settings.redis_appendonly)
    began = time.monotonic()
    deadline = began + settings.max_minutes * 60
    phases: dict[str, float] = {}
    try:
        fleet.start()
        phases["fleet_start_s"] = round(time.monotonic() - began, 1)
        refs, fault_free_failures = references(fleet.harness.stub(), pool, tag,
                                               settings.timeout_s)
        phases["references_s"] = round(time.monotonic() - began - phases["fleet_start_s"], 1)
        t0 = time.time()
        load, records, errors = _drive(fleet, settings, calls, refs, rng, tag, deadline)
        phases["chaos_s"] = round(time.time() - t0, 1)
    finally:
        fleet.stop()
    captured = [load.captured[c.index] for c in calls if c.index in load.captured]
    judged = [judge(c.outcome, refs[c.outcome.call.spec], records, settings.timeout_s)
              for c in captured]
    results = figures(judged, captured, records, rerun_causes(work_dir / "logs"), t0)
    results["passed"] = results["passed"] and not errors and len(captured) == len(calls)
    results.update({
        "settings": asdict(settings), "fleet": asdict(timings), "errors": errors,
        "reference_failures": fault_free_failures,
        "phases": phases, "total_s": round(time.monotonic() - began, 1),
        "worker_starts_s": [round(s, 1) for s in fleet.worker_starts_s],
        "references": [{"prompt": s.prompt, "max_tokens": s.max_tokens} for s in pool],
        "work_dir": str(work_dir),
    })
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = ChaosSettings()
    p.add_argument("--requests", type=int, default=d.requests)
    p.add_argument("--kills", type=int, default=d.kills, help="worker SIGKILLs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-drain", action="store_true", help="skip the SIGTERM drain")
    p.add_argument("--no-redis-restart", action="store_true", help="skip the Redis restart")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="client threads")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="per-call deadline, s")
    p.add_argument("--drain-grace", type=float, default=d.drain_grace_s,
                   help="the workers' FLEET_DRAIN_GRACE_S")
    p.add_argument("--redis-appendonly", action="store_true",
                   help="Redis keeps an append-only file (as in production), so its restart "
                   "finds the queues and streams; default: it restarts empty")
    p.add_argument("--max-minutes", type=float, default=d.max_minutes,
                   help="the whole run's time limit")
    p.add_argument("--work-dir", type=Path, help="default: a new directory under /tmp (kept)")
    p.add_argument("--report", type=Path, help="write the Markdown report here")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = ChaosSettings(
        requests=args.requests, kills=args.kills, seed=args.seed, drain=not args.no_drain,
        redis_restart=not args.no_redis_restart, concurrency=args.concurrency,
        timeout_s=args.timeout, drain_grace_s=args.drain_grace,
        redis_appendonly=args.redis_appendonly, max_minutes=args.max_minutes)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="fleet-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    results = run_chaos(settings, work_dir)
    results["command"] = ".venv/bin/python -m bench.chaos " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    results["machine"] = describe(REPO)
    results["lscpu"] = lscpu()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.report:
        args.report.write_text(render(results))
    summary = {k: results[k] for k in ("calls", "by_status", "lost", "wrong_or_spliced",
                                       "untrue_or_not_retryable", "rerun_requests", "passed")}
    print(json.dumps(summary, indent=2))
    print(f"logs: {work_dir / 'logs'}", file=sys.stderr)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
