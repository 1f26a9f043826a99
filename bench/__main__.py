"""`python -m bench run ...` runs the benchmark; `python -m bench report RUN_DIR` re-renders.

Examples:

    # the demo model (SmolLM2-135M-Instruct, prepared on first use), published to docs/
    python -m bench run --demo --profile --publish

    # a real Code Llama on a GPU machine
    python -m bench run --model-dir /models/CodeLlama-7b-hf --model-name codellama-7b \\
        --variant codellama-7b --no-enforce-eager --rates 2,4,8 --publish

The settings are built here, once; nothing else reads the command line or the environment.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.settings import (
    BACKENDS,
    DEFAULT_BACKENDS,
    AdmissionSettings,
    BenchSettings,
    EngineSettings,
    FairnessSettings,
    OverloadSettings,
    Slo,
    SmgSettings,
    WorkloadSettings,
    default_phases,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "var" / "models" / "smollm2-135m-instruct"
DOWNLOAD_DIR = REPO / "var" / "downloads"
PUBLISH_DIR = REPO / "docs" / "benchmarks"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = root.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the benchmark",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = run.add_argument_group("model and engine (identical for every backend)")
    which = model.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-dir", type=Path, help="a Hugging Face checkpoint directory")
    which.add_argument("--demo", action="store_true",
                       help=f"the demo model (SmolLM2-135M-Instruct), prepared into {DEMO_DIR}")
    model.add_argument("--model-name", help="name in the fleet's registry and the vLLM server "
                                            "(default: from the directory name)")
    model.add_argument("--variant", help="Code Llama catalog variant for the registry "
                                         "(e.g. codellama-7b)")
    model.add_argument("--dtype", default="auto")
    model.add_argument("--max-model-len", type=int, default=2048)
    model.add_argument("--tensor-parallel-size", type=int, default=1)
    model.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                       help="CUDA graphs off (no effect on CPU); use --no-enforce-eager on GPUs")
    model.add_argument("--kv-cache-gib", type=int, default=1,
                       help="VLLM_CPU_KVCACHE_SPACE (CPU builds only)")
    model.add_argument("--engine-seed", type=int, default=0)
    model.add_argument("--startup-timeout-s", type=float, default=600.0)

    load = run.add_argument_group("workload and load patterns")
    load.add_argument("--input-len", type=int, default=128)
    load.add_argument("--output-len", type=int, default=128)
    load.add_argument("--seed", type=int, default=0, help="prompts and arrival times")
    load.add_argument("--concurrency", type=_ints, default=(1, 8, 32),
                      help="closed-loop concurrencies, comma-separated")
    load.add_argument("--closed-waves", type=int, default=3,
                      help="closed-loop requests = waves x concurrency ...")
    load.add_argument("--closed-min-requests", type=int, default=8, help="... but at least this")
    load.add_argument("--rates", type=_floats, default=(1.0, 2.0, 4.0),
                      help="open-loop Poisson rates (req/s), comma-separated; empty: none")
    load.add_argument("--open-requests", type=int, default=32, help="requests per open loop")
    load.add_argument("--warmup", type=int, default=4, help="warm-up requests per backend")
    load.add_argument("--screen-prompts", action=argparse.BooleanOptionalAction, default=False,
                      help="keep only prompts whose greedy continuation does not hit a stop "
                           "token within --output-len (one vLLM pass before the backends)")
    load.add_argument("--screen-concurrency", type=int, default=64)
    load.add_argument("--request-timeout-s", type=float, default=600.0)

    what = run.add_argument_group("what to run and where results go")
    what.add_argument("--backends", type=_names, default=DEFAULT_BACKENDS,
                      help=f"comma-separated subset of {','.join(BACKENDS)}")
    what.add_argument("--repeat", type=int, default=1,
                      help="passes for the spread of the ratios: the first runs every phase, "
                           "each further one reruns the c=1 and c=32 phases (lowest and "
                           "highest --concurrency) on every backend, in reversed order every "
                           "other pass; 3 or more for a spread worth reading")
    peers = run.add_argument_group(
        "SMG peers (vllm-grpc: vLLM's gRPC servicer; smg: the SMG router in front of it)")
    peers.add_argument("--smg-servicer-impl", choices=("python", "rust"), default="python",
                       help="SMG_VLLM_SERVICER_IMPL of the servicer: its Python request path "
                            "or its Rust one (needs the smg wheel)")
    peers.add_argument("--smg-policy", default=None,
                       help="the router's --policy (default: the router's own, cache_aware)")
    peers.add_argument("--smg-input", choices=("auto", "text", "ids"), default="auto",
                       help="prompts to the router as text (it tokenizes), as token ids, or "
                            "text when its tokenizer gives exactly the workload's ids")
    what.add_argument("--goodput-ttft-ms", type=float, default=1000.0)
    what.add_argument("--goodput-tpot-ms", type=float, default=100.0)
    what.add_argument("--admission-requests", type=int, default=3000,
                      help="gateway-alone requests per measurement (0: skip)")
    what.add_argument("--admission-concurrency", type=int, default=64)
    over = run.add_argument_group(
        "overload (the fleet past its capacity: admission control and goodput)")
    over.add_argument("--overload", action="store_true",
                      help="after the rest, run one worker at its capacity, then at "
                           "--overload-factor x that load, with deadlines")
    over.add_argument("--overload-capacity", type=int, default=8,
                      help="the worker's FLEET_CONCURRENCY, i.e. its published capacity")
    over.add_argument("--overload-factor", type=float, default=4.0,
                      help="offered load of the overload phase, x the capacity phase's rate")
    over.add_argument("--overload-seconds", type=float, default=30.0,
                      help="measured window of each phase")
    over.add_argument("--overload-deadline-s", type=float, default=10.0)
    over.add_argument("--overload-input-len", type=int, default=64)
    over.add_argument("--overload-output-len", type=int, default=32)
    over.add_argument("--overload-queue-factor", type=float, default=2.0,
                      help="the gateway's FLEET_ADMISSION_QUEUE_FACTOR")
    over.add_argument("--overload-baseline", action=argparse.BooleanOptionalAction,
                      default=True, help="also offer the overload to a gateway with admission "
                                         "control off (what the fleet did before it)")
    fair = run.add_argument_group(
        "fairness (two tenants on one worker: B's TTFT while A floods, A's share of the rest)")
    fair.add_argument("--fairness", action="store_true",
                      help="after the rest, run one worker of --fairness-capacity with tenant B "
                           "alone, then B with tenant A sending --fairness-a-multiple x B's load")
    fair.add_argument("--fairness-capacity", type=int, default=4,
                      help="the worker's FLEET_CONCURRENCY = FLEET_MAX_NUM_SEQS = FLEET_CAPACITY")
    fair.add_argument("--fairness-seconds", type=float, default=30.0,
                      help="measured window of each phase")
    fair.add_argument("--fairness-probe-seconds", type=float, default=15.0,
                      help="window of the closed-loop capacity probe")
    fair.add_argument("--fairness-b-rate", type=float, default=0.0,
                      help="B's Poisson rate in req/s (0: --fairness-b-share x the probe's rate)")
    fair.add_argument("--fairness-b-share", type=float, default=1 / 3,
                      help="B's rate as a share of the rate the capacity probe completed")
    fair.add_argument("--fairness-a-multiple", type=float, default=10.0,
                      help="A's Poisson rate, x B's")
    fair.add_argument("--fairness-deadline-s", type=float, default=10.0)
    fair.add_argument("--fairness-input-len", type=int, default=64)
    fair.add_argument("--fairness-output-len", type=int, default=32)
    fair.add_argument("--fairness-queue-factor", type=float, default=2.0,
                      help="the gateway's FLEET_ADMISSION_QUEUE_FACTOR")
    fair.add_argument("--fairness-reserve", type=int, default=1,
                      help="the worker's FLEET_FAIR_SHARE_RESERVE: slots beyond "
                           "--fairness-capacity kept for tenants under their fair share")
    fair.add_argument("--fairness-a-max-concurrent", type=int, default=None,
                      help="tenant A's max_concurrent quota in its registry policy (default: "
                           "--fairness-capacity - 1; 0: no quota); B has none")
    fair.add_argument("--fairness-no-admission", action=argparse.BooleanOptionalAction,
                      default=True, help="also offer B + A's flood to a second gateway with "
                                         "admission control off (the fair lines alone)")
    fair.add_argument("--fairness-fifo", action=argparse.BooleanOptionalAction, default=False,
                      help="also run the control: A and B both send the probe tenant's key (no "
                           "quota), so both wait in one first-come-first-served line (what B "
                           "gets without fair share)")
    fair.add_argument("--fairness-a-alone", action=argparse.BooleanOptionalAction,
                      default=False, help="also run A alone at its flood rate")
    what.add_argument("--profile", action="store_true",
                      help="py-spy on gateway and worker during an extra, unmeasured repeat "
                           "of the highest-concurrency closed phase")
    what.add_argument("--fleet-log-level", default="INFO")
    what.add_argument("--out-dir", type=Path, default=REPO / "bench-results")
    what.add_argument("--publish", nargs="?", type=Path, const=PUBLISH_DIR, default=None,
                      help=f"copy report, JSON and plots here (default {PUBLISH_DIR})")
    what.add_argument("--no-progress", action="store_true")
    what.add_argument("--wait-idle-s", type=float, default=0.0,
                      help="before each backend and phase, wait up to this long for other "
                           "processes to calm down (shared machines); 0: start at once")
    what.add_argument("--idle-cores", type=float, default=0.25,
                      help="'calm' means other processes keep fewer cores busy than this")
    what.add_argument("--retry-disturbed", type=int, default=0,
                      help="run a phase again (fresh prompts) when other processes kept "
                           "--idle-cores or more busy during it, up to this many times")
    what.add_argument("--note", default="", help="a paragraph added to the report")
    what.add_argument("--code-version", help="the code measured, for the report (default: "
                                             "git commit of this checkout)")

    report = sub.add_parser("report", help="re-render report.md and plots from results.json")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--publish", nargs="?", type=Path, const=PUBLISH_DIR, default=None)
    return root


def model_name_of(path: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", path.name.lower()).strip("-._") or "model"
    return name[:64]


def settings_from(args: argparse.Namespace) -> BenchSettings:
    if args.demo:
        from demo.smollm2 import prepare_demo_model

        model_dir = prepare_demo_model(DEMO_DIR, DOWNLOAD_DIR,
                                       progress=not args.no_progress).resolve()
    else:
        model_dir = args.model_dir.resolve()
    engine = EngineSettings(
        model_dir=model_dir, model_name=args.model_name or model_name_of(model_dir),
        dtype=args.dtype, max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size, enforce_eager=args.enforce_eager,
        kv_cache_gib=args.kv_cache_gib, seed=args.engine_seed, variant=args.variant,
        startup_timeout_s=args.startup_timeout_s)
    return BenchSettings(
        engine=engine,
        workload=WorkloadSettings(args.input_len, args.output_len, args.seed),
        phases=default_phases(args.concurrency, args.closed_waves, args.closed_min_requests,
                              args.rates, args.open_requests),
        warmup_requests=args.warmup,
        backends=args.backends,
        slo=Slo(args.goodput_ttft_ms, args.goodput_tpot_ms),
        admission=AdmissionSettings(
            grpc_requests=args.admission_requests,
            grpc_concurrency=args.admission_concurrency,
            inprocess_requests=args.admission_requests,
            inprocess_concurrency=args.admission_concurrency,
            max_tokens=args.output_len),
        overload=OverloadSettings(
            capacity=args.overload_capacity, factor=args.overload_factor,
            seconds=args.overload_seconds, deadline_s=args.overload_deadline_s,
            input_len=args.overload_input_len, output_len=args.overload_output_len,
            queue_factor=args.overload_queue_factor,
            baseline=args.overload_baseline) if args.overload else None,
        fairness=FairnessSettings(
            capacity=args.fairness_capacity, reserve=args.fairness_reserve,
            seconds=args.fairness_seconds,
            probe_seconds=args.fairness_probe_seconds, b_rate=args.fairness_b_rate,
            b_share=args.fairness_b_share, a_multiple=args.fairness_a_multiple,
            deadline_s=args.fairness_deadline_s, input_len=args.fairness_input_len,
            output_len=args.fairness_output_len, queue_factor=args.fairness_queue_factor,
            a_max_concurrent=args.fairness_a_max_concurrent,
            no_admission=args.fairness_no_admission, fifo=args.fairness_fifo,
            a_alone=args.fairness_a_alone) if args.fairness else None,
        smg=SmgSettings(servicer_impl=args.smg_servicer_impl, policy=args.smg_policy,
                        input_mode=args.smg_input),
        repeat=args.repeat,
        profile=args.profile,
        out_dir=args.out_dir,
        publish_dir=args.publish,
        progress=not args.no_progress,
        request_timeout_s=args.request_timeout_s,
        fleet_log_level=args.fleet_log_level,
        note=args.note,
        code_version=args.code_version,
        idle_wait_s=args.wait_idle_s,
        idle_cores=args.idle_cores,
        retry_disturbed=args.retry_disturbed,
        screen_prompts=args.screen_prompts,
        screen_concurrency=args.screen_concurrency,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "report":
        from bench import plots, report
        from bench.cli import publish

        results = json.loads((args.run_dir / "results.json").read_text())
        if results["backends"]:
            plots.render_all(results, args.run_dir)
        print(report.write(results, args.run_dir))
        if args.publish:
            publish(args.run_dir, args.publish)
        return 0
    settings = settings_from(args)
    from bench.cli import run

    run_dir = run(settings)
    print(run_dir / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
