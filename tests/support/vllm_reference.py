""""vLLM alone": run requests through a bare vLLM engine, one at a time, and record the results.

The fleet's end-to-end tests compare what the gateway returns with what vLLM itself produces
for the same token ids and sampling parameters. This module is that truth:

    python -m tests.support.vllm_reference --model DIR --requests requests.json --out out.json \
        [--tensor-parallel-size N] [--dtype config|auto|float32|bfloat16] [--max-model-len N]

`requests.json` is a list (or {"requests": [...]}) of objects:

    {"prompt_token_ids": [1, ...], "max_tokens": 16, "stop_token_ids": [2],
     "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": null, "repetition_penalty": 1.0,
     "ignore_eos": false, "id": "anything"}

Only `prompt_token_ids` is required; the optional sampling keys are those of
`SAMPLING_KEYS` (vLLM `SamplingParams` names; temperature defaults to 0, i.e. greedy). Unknown
keys are an error, so a typo cannot silently fall back to a default.

Requests run sequentially (each finishes before the next starts), so batching cannot change
the numerics. Prefix caching is off by default for the same reason (`--enable-prefix-caching`
turns it on). `out.json` holds

    {"results": [{"token_ids": [...], "text": "...", "finish_reason": "stop"|"length",
                  "stop_reason": null|int|str, "num_prompt_tokens": n,
                  "ttft_s": t, "elapsed_s": t, "id": ...}, ...],
     "meta": {"model": ..., "tensor_parallel_size": ..., "dtype": ..., "vllm_version": ...,
              "engine_start_s": ..., "total_generate_s": ..., "output_tokens": ...,
              "tokens_per_s": ...}}

`results[i]` answers `requests[i]`. `text` is vLLM's own detokenisation (RequestOutput text,
`skip_special_tokens` as requested, default true).

The engine runs in this process (vLLM spawns its engine core), so call this module as a
script or through `run_reference`, which starts it as a subprocess. Environment defaults set
when missing: VLLM_CPU_KVCACHE_SPACE=1 and, for tensor parallel size N > 1,
VLLM_CPU_OMP_THREADS_BIND="0|1|...|N-1" (one core per rank).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: Optional per-request keys passed to vLLM's SamplingParams unchanged.
SAMPLING_KEYS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "ignore_eos",
        "min_tokens",
        "stop",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "include_stop_str_in_output",
        "logprobs",
        "allowed_token_ids",
    }
)
REQUEST_KEYS = SAMPLING_KEYS | {"prompt_token_ids", "max_tokens", "stop_token_ids", "id"}
DEFAULT_MAX_TOKENS = 16
REPO_ROOT = Path(__file__).resolve().parents[2]


def validate_requests(requests: Any) -> list[dict[str, Any]]:
    """Check the request list's shape; return it as a list of dicts (raises ValueError)."""
    if isinstance(requests, Mapping) and "requests" in requests:
        requests = requests["requests"]
    if not isinstance(requests, list):
        raise ValueError(f"requests must be a list, got {type(requests).__name__}")
    checked = []
    for i, request in enumerate(requests):
        if not isinstance(request, Mapping):
            raise ValueError(f"requests[{i}] must be an object, got {type(request).__name__}")
        unknown = set(request) - REQUEST_KEYS
        if unknown:
            raise ValueError(f"requests[{i}] has unknown keys {sorted(unknown)}")
        ids = request.get("prompt_token_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise ValueError(f"requests[{i}].prompt_token_ids must be a non-empty list of ints")
        max_tokens = request.get("max_tokens", DEFAULT_MAX_TOKENS)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"requests[{i}].max_tokens must be a positive int, got {max_tokens!r}")
        stops = request.get("stop_token_ids", [])
        if not isinstance(stops, list) or not all(isinstance(t, int) for t in stops):
            raise ValueError(f"requests[{i}].stop_token_ids must be a list of ints")
        checked.append(dict(request))
    return checked


def sampling_params_kwargs(request: Mapping[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword arguments for one request (greedy unless told otherwise)."""
    kwargs: dict[str, Any] = {"temperature": 0.0}
    kwargs.update({k: v for k, v in request.items() if k in SAMPLING_KEYS})
    kwargs["max_tokens"] = request.get("max_tokens", DEFAULT_MAX_TOKENS)
    if request.get("stop_token_ids"):
        kwargs["stop_token_ids"] = list(request["stop_token_ids"])
    return kwargs


def config_dtype(model: Path) -> str:
    """The dtype named in `model`/config.json ("dtype" or "torch_dtype"), else "auto"."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return "auto"
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")


def apply_env_defaults(tensor_parallel_size: int, env: dict[str, str] | None = None) -> dict:
    """Set the CPU engine's environment defaults in `env` (default os.environ); return it."""
    env = os.environ if env is None else env
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if tensor_parallel_size > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "|".join(map(str, range(tensor_parallel_size))))
    return env


async def run_requests(
    model: Path,
    requests: Sequence[Mapping[str, Any]],
    *,
    tensor_parallel_size: int = 1,
    dtype: str = "config",
    max_model_len: int = 2048,
    enable_prefix_caching: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Start an AsyncLLM on `model`, run `requests` one after another, shut it down.

    Must run in a process whose main module is guarded by `if __name__ == "__main__":`.
    """
    requests = validate_requests(list(requests))
    apply_env_defaults(tensor_parallel_size)
    import vllm
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.async_llm import AsyncLLM

    resolved_dtype = config_dtype(model) if dtype == "config" else dtype
    args = AsyncEngineArgs(
        model=str(model),
        dtype=resolved_dtype,
        enforce_eager=True,
        max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size,
        enable_prefix_caching=enable_prefix_caching,
        seed=seed,
        disable_log_stats=True,
    )
    started = time.monotonic()
    engine = AsyncLLM.from_engine_args(args)
    engine_start_s = time.monotonic() - started
    results: list[dict[str, Any]] = []
    generate_started = time.monotonic()
    try:
        for i, request in enumerate(requests):
            params = SamplingParams(**sampling_params_kwargs(request))
            prompt = TokensPrompt(prompt_token_ids=list(request["prompt_token_ids"]))
            t0 = time.monotonic()
            ttft: float | None = None
            final = None
            async for output in engine.generate(prompt, params, request_id=f"ref-{i}"):
                if ttft is None and output.outputs and output.outputs[0].token_ids:
                    ttft = time.monotonic() - t0
                final = output
            elapsed = time.monotonic() - t0
            if final is None or not final.outputs:
                raise RuntimeError(f"request {i}: vLLM returned no output")
            completion = final.outputs[0]
            result: dict[str, Any] = {
                "token_ids": list(completion.token_ids),
                "text": completion.text,
                "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason,
                "num_prompt_tokens": len(final.prompt_token_ids or request["prompt_token_ids"]),
                "ttft_s": ttft,
                "elapsed_s": elapsed,
            }
            if request.get("logprobs") is not None and completion.logprobs is not None:
                result["logprobs"] = [
                    {str(tok): lp.logprob for tok, lp in step.items()}
                    for step in completion.logprobs
                ]
            if "id" in request:
                result["id"] = request["id"]
            results.append(result)
        total = time.monotonic() - generate_started
    finally:
        engine.shutdown()
        # AsyncLLM.__del__ shuts down again; if that ran at interpreter exit it would print
        # "TypeError: 'NoneType' object is not callable", so collect it here instead.
        del engine
        gc.collect()
    output_tokens = sum(len(r["token_ids"]) for r in results)
    # The first request may pay for lazy warm-up (3-16 s seen with 2 CPU ranks), so the
    # rate over the remaining requests is the steady-state figure.
    rest_s = sum(r["elapsed_s"] for r in results[1:])
    rest_tokens = sum(len(r["token_ids"]) for r in results[1:])
    meta = {
        "model": str(model),
        "tensor_parallel_size": tensor_parallel_size,
        "dtype": resolved_dtype,
        "max_model_len": max_model_len,
        "enable_prefix_caching": enable_prefix_caching,
        "vllm_version": getattr(vllm, "__version__", "unknown"),
        "engine_start_s": round(engine_start_s, 3),
        "total_generate_s": round(total, 3),
        "output_tokens": output_tokens,
        "tokens_per_s": round(output_tokens / total, 2) if total > 0 else None,
        "first_request_s": round(results[0]["elapsed_s"], 3) if results else None,
        "tokens_per_s_after_first": round(rest_tokens / rest_s, 2) if rest_s > 0 else None,
    }
    return {"results": results, "meta": meta}


def run_reference(
    model: Path,
    requests: Sequence[Mapping[str, Any]],
    *,
    tensor_parallel_size: int = 1,
    dtype: str = "config",
    max_model_len: int = 2048,
    enable_prefix_caching: bool = False,
    timeout: float = 600.0,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run this module in a subprocess (fresh engine) and return its parsed output file."""
    requests = validate_requests(list(requests))
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    apply_env_defaults(tensor_parallel_size, child_env)
    with tempfile.TemporaryDirectory(prefix="vllm-reference-") as tmp:
        req_path = Path(tmp) / "requests.json"
        out_path = Path(tmp) / "out.json"
        req_path.write_text(json.dumps(requests))
        cmd = [
            sys.executable, "-m", "tests.support.vllm_reference",
            "--model", str(model), "--requests", str(req_path), "--out", str(out_path),
            "--tensor-parallel-size", str(tensor_parallel_size), "--dtype", dtype,
            "--max-model-len", str(max_model_len),
        ]  # fmt: skip
        if enable_prefix_caching:
            cmd.append("--enable-prefix-caching")
        # Own session, so a timeout can kill the engine-core and worker grandchildren too.
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            raise RuntimeError(
                f"vllm_reference timed out after {timeout} s; stderr tail:\n{stderr[-4000:]}"
            ) from None
        except BaseException:  # e.g. KeyboardInterrupt: do not leave an engine running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(
                f"vllm_reference exited with {proc.returncode}; stderr tail:\n{stderr[-4000:]}"
            )
        return json.loads(out_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.vllm_reference",
        description="Run requests through bare vLLM one at a time and write the results.",
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument(
        "--dtype",
        default="config",
        help='"config" (default) uses config.json\'s dtype; vLLM\'s "auto" down-casts float32',
    )
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--enable-prefix-caching", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    requests = validate_requests(json.loads(args.requests.read_text()))
    out = asyncio.run(
        run_requests(
            args.model,
            requests,
            tensor_parallel_size=args.tensor_parallel_size,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            enable_prefix_caching=args.enable_prefix_caching,
            seed=args.seed,
        )
    )
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, args.out)
    meta = out["meta"]
    print(
        f"{len(out['results'])} requests, engine start {meta['engine_start_s']:.1f} s, "
        f"{meta['output_tokens']} tokens in {meta['total_generate_s']:.2f} s "
        f"({meta['tokens_per_s']} tokens/s; first request {meta['first_request_s']} s, "
        f"then {meta['tokens_per_s_after_first']} tokens/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
