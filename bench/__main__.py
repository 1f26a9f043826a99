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
    AdmissionSettings,
    BenchSettings,
    EngineSettings,
    Slo,
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
    what.add_argument("--backends", type=_names, default=BACKENDS,
                      help=f"comma-separated subset of {','.join(BACKENDS)}")
    what.add_argument("--goodput-ttft-ms", type=float, default=1000.0)
    what.add_argument("--goodput-tpot-ms", type=float, default=100.0)
    what.add_argument("--admission-requests", type=int, default=3000,
                      help="gateway-alone requests per measurement (0: skip)")
    what.add_argument("--admission-concurrency", type=int, default=64)
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
        from model_registry.demo_model import prepare_demo_model

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
