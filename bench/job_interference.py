"""What a large batch job costs interactive callers (issue: jobs are polite to interactive
traffic; target: interactive TTFT p50 within 1.1x of the same load without the batch).

One fleet (Redis, one worker, a gateway serving JobService on the registry's database); in
each of `--repeat` rounds, alternating: the interactive load alone (`--interactive-requests`
streaming completions, `--concurrency` at a time), then the same load while a batch of
`--batch-items` items runs (submitted before, cancelled after). Reports TTFT p50 and p90 per
round and over all rounds, the ratio, and how many batch items ended while the interactive load
ran (the capacity the batch still got).

    python -m bench.job_interference --demo --report docs/benchmarks/jobs.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.backends.fleet import FleetDeployment
from bench.machine import describe
from bench.settings import EngineSettings

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.1


@dataclass(frozen=True)
class InterferenceSettings:
    batch_items: int = 2000
    interactive_requests: int = 48
    concurrency: int = 4
    output_len: int = 32
    repeat: int = 3
    worker_capacity: int = 8
    job_window: int = 2


def _ttft(stub: Any, model: str, prompt: str, tokens: int) -> float:
    from codellama.fleet.v1 import generation_pb2 as pb
    from codellama.fleet.v1 import inference_service_pb2 as api

    started, first = time.perf_counter(), None
    for message in stub.StreamComplete(api.StreamCompleteRequest(
            model=model, prompt=prompt, sampling=pb.SamplingParams(
                max_tokens=tokens, ignore_eos=True, temperature=0.0)), timeout=300):
        if first is None and any(d.token_ids for d in message.deltas):
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("a stream ended without tokens")
    return first


def interactive_load(target: str, model: str, s: InterferenceSettings, tag: str) -> list[float]:
    from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub

    stub = InferenceServiceStub(grpc.insecure_channel(target))
    with ThreadPoolExecutor(s.concurrency) as pool:
        return list(pool.map(lambda i: _ttft(stub, model, f"# {tag} {i}\ndef f():",
                                             s.output_len), range(s.interactive_requests)))


def _batch(model: str, s: InterferenceSettings, tag: str) -> Any:
    from codellama.fleet.v1 import generation_pb2 as pb
    from codellama.fleet.v1 import inference_service_pb2 as api
    from codellama.fleet.v1 import job_service_pb2 as jobs

    items = [jobs.BatchItem(custom_id=f"{tag}-{i}", request=jobs.JobRequest(
        complete=api.CompleteRequest(model=model, prompt=f"# review {tag} {i}\ndef g():",
                                     sampling=pb.SamplingParams(
                                         max_tokens=s.output_len, ignore_eos=True,
                                         temperature=0.0))))
             for i in range(s.batch_items)]
    yield jobs.SubmitBatchStreamRequest(items=items[:500])
    for start in range(500, len(items), 500):
        yield jobs.SubmitBatchStreamRequest(items=items[start:start + 500])


def _job(stub: Any, job_id: str) -> Any:
    from codellama.fleet.v1 import job_service_pb2 as jobs

    return stub.GetJob(jobs.GetJobRequest(job_id=job_id), timeout=30).job


def with_batch(target: str, model: str, s: InterferenceSettings, tag: str
               ) -> tuple[list[float], int]:
    """The interactive load while a batch runs; returns its TTFTs and the batch items that
    ended while it ran."""
    from codellama.fleet.v1 import job_service_pb2 as jobs
    from codellama.fleet.v1.job_service_pb2_grpc import JobServiceStub

    stub = JobServiceStub(grpc.insecure_channel(target))
    job = stub.SubmitBatchStream(_batch(model, s, tag), timeout=120).job
    deadline = time.monotonic() + 120
    while _job(stub, job.job_id).counts.running < min(s.job_window, s.batch_items):
        if time.monotonic() > deadline:
            raise RuntimeError("the batch never filled its window")
        time.sleep(0.05)
    before = _job(stub, job.job_id).counts.succeeded
    ttfts = interactive_load(target, model, s, tag)
    ended = _job(stub, job.job_id).counts.succeeded - before
    stub.CancelJob(jobs.CancelJobRequest(job_id=job.job_id), timeout=30)
    while _job(stub, job.job_id).state not in (jobs.JOB_STATE_CANCELLED,
                                               jobs.JOB_STATE_SUCCEEDED):
        time.sleep(0.1)
    return ttfts, ended


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(engine: EngineSettings, s: InterferenceSettings, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    capacity = str(s.worker_capacity)
    fleet = FleetDeployment.start(
        engine, run_dir, log_level="WARNING",
        worker_env={"FLEET_CONCURRENCY": capacity, "FLEET_MAX_NUM_SEQS": capacity,
                    "FLEET_CAPACITY": capacity},
        gateway_extra_env={"FLEET_JOBS_DATABASE_URL": f"sqlite:///{run_dir / 'registry.db'}",
                           "FLEET_JOB_WINDOW": str(s.job_window)})
    rounds = []
    try:
        interactive_load(fleet.target, engine.model_name, s, "warm-up")
        for r in range(s.repeat):
            tag = f"r{r}-{uuid.uuid4().hex[:6]}"
            alone = interactive_load(fleet.target, engine.model_name, s, f"{tag}-alone")
            loaded, ended = with_batch(fleet.target, engine.model_name, s, f"{tag}-batch")
            rounds.append({"alone_p50_ms": 1000 * statistics.median(alone),
                           "alone_p90_ms": 1000 * _p(alone, 0.9),
                           "batch_p50_ms": 1000 * statistics.median(loaded),
                           "batch_p90_ms": 1000 * _p(loaded, 0.9),
                           "batch_items_ended": ended})
    finally:
        fleet.stop()
    alone_p50 = statistics.median(r["alone_p50_ms"] for r in rounds)
    batch_p50 = statistics.median(r["batch_p50_ms"] for r in rounds)
    return {"settings": asdict(s), "model": engine.model_name, "rounds": rounds,
            "alone_p50_ms": alone_p50, "batch_p50_ms": batch_p50,
            "ratio": batch_p50 / alone_p50, "target_ratio": TARGET_RATIO,
            "machine": describe(REPO), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def render(r: dict[str, Any]) -> str:
    s = r["settings"]
    verdict = "met" if r["ratio"] <= r["target_ratio"] else "missed"
    lines = [
        "# Batch jobs and interactive latency", "",
        f"Measured {r['date']} on {r['machine']['cpu_model']} "
        f"({r['machine']['usable_cpus']} usable CPUs, {r['machine']['memory_gib']} GiB, "
        f"commit {r['machine']['git_commit']}), model `{r['model']}`, with "
        "`python -m bench.job_interference` (its docstring says what it does).", "",
        f"Interactive load: {s['interactive_requests']} streaming completions of "
        f"{s['output_len']} tokens, {s['concurrency']} at a time, on one worker of capacity "
        f"{s['worker_capacity']}. Batch: {s['batch_items']} items of {s['output_len']} tokens, "
        f"at most {s['job_window']} in the queues at once (`FLEET_JOB_WINDOW`), PRIORITY_LOW.",
        "",
        f"**Interactive TTFT p50: {r['alone_p50_ms']:.0f} ms alone, {r['batch_p50_ms']:.0f} ms "
        f"with the batch running: {r['ratio']:.2f}x (target at most {r['target_ratio']}x, "
        f"{verdict}).**", "",
        "| round | alone p50 (ms) | alone p90 (ms) | with batch p50 (ms) | with batch p90 (ms) "
        "| batch items ended meanwhile |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, row in enumerate(r["rounds"], 1):
        lines.append(f"| {i} | {row['alone_p50_ms']:.0f} | {row['alone_p90_ms']:.0f} | "
                     f"{row['batch_p50_ms']:.0f} | {row['batch_p90_ms']:.0f} | "
                     f"{row['batch_items_ended']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.job_interference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--demo", action="store_true", help="the demo model")
    which.add_argument("--model-dir", type=Path)
    d = InterferenceSettings()
    for name, value in asdict(d).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    p.add_argument("--model-name", help="default: the directory's name")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--run-dir", type=Path, default=REPO / "var" / "bench-jobs")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--report", type=Path, help="write the markdown report here")
    args = p.parse_args(argv)
    if args.demo:
        from bench.__main__ import DEMO_DIR, DOWNLOAD_DIR
        from demo.smollm2 import prepare_demo_model

        model_dir = prepare_demo_model(DEMO_DIR, DOWNLOAD_DIR).resolve()
    else:
        model_dir = args.model_dir.resolve()
    engine = EngineSettings(model_dir=model_dir, dtype=args.dtype,
                            model_name=args.model_name or model_dir.name.lower()[:64])
    settings = InterferenceSettings(**{k: getattr(args, k) for k in asdict(d)})
    results = run(engine, settings, args.run_dir / time.strftime("%Y%m%d-%H%M%S"))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    if args.report:
        args.report.write_text(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
