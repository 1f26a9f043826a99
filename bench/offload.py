"""Where should the gateway build prompts: inline on its event loop, in a thread, in a process?

For prompts of several sizes (code text cut from the standard library's sources), each
strategy builds completion prompts through the gateway's `PromptBuilder.build`:

- ``inline``: called on the event loop, as the gateway did before it moved the work off-loop;
- ``thread``: `loop.run_in_executor` on a ThreadPoolExecutor; both tokenizer backends release
  the GIL while they encode (HF `tokenizers`' batch call and SentencePiece), so the loop keeps
  running while a long prompt encodes;
- ``process``: a ProcessPoolExecutor (spawned children, each loading the tokenizer once at
  start); the request goes to the child pickled, and the built prompt's ids come back pickled;
- ``auto``: `PromptBuilder.build_async`, what the gateway does: inline up to
  `INLINE_MAX_CHARS`, in its thread pool above.

Per size and strategy: wall time per call one at a time, CPU per call (this process, all its
threads; with its children too, which is what a process pool really costs), the longest the
event loop was kept from running (the worst lag of a task sleeping 1 ms in a loop), and, at a
concurrency, calls per CPU-second. The pickling a process pool adds is also timed alone.

`python -m bench.offload --model-dir DIR [--sizes 200,8000,200000,1000000] [--out FILE]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pickle
import random
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

from bench.cpu import Component, snapshot
from bench.metrics import distribution_ms
from gateway.prompts import EnginePrompt, PromptBuilder, PromptInput
from gateway.settings import Limits
from model_registry.records import ServedModel

SIZES = (200, 1_000, 2_000, 4_000, 8_000, 200_000, 1_000_000)
STRATEGIES = ("inline", "thread", "process", "auto")
HEARTBEAT_S = 0.001
_SOURCES = ("asyncio", "email", "json", "concurrent", "http", "logging", "unittest")

_child_builder: PromptBuilder | None = None


def code_text(chars: int, seed: int) -> str:
    """`chars` characters of Python source from the standard library, from a seeded offset."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for name in _SOURCES for p in (lib / name).rglob("*.py"))
    corpus = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    while len(corpus) < 2 * chars:
        corpus += "\n" + corpus
    start = random.Random(seed).randrange(len(corpus) - chars)
    return corpus[start:start + chars]


def served_model(model_dir: Path) -> ServedModel:
    return ServedModel(model="bench", version="v1", pool="7b", checkpoint="bench",
                       checkpoint_dir=str(model_dir), template="bench@1", chat_format="",
                       chat_template="", supports_infill=False, context_limit=10**8,
                       tensor_parallel_size=1, dtype="auto")


def _child_init(checkpoint_dir: str) -> None:
    global _child_builder
    _child_builder = PromptBuilder(Limits())
    _child_builder.tokenizer(checkpoint_dir)


def _child_build(served: ServedModel, prompt_input: PromptInput) -> EnginePrompt:
    assert _child_builder is not None
    return _child_builder.build(served, prompt_input)


class _Heartbeat:
    """A task that sleeps `HEARTBEAT_S` in a loop and records how late it wakes up."""

    def __init__(self) -> None:
        self.max_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            due = time.perf_counter() + HEARTBEAT_S
            await asyncio.sleep(HEARTBEAT_S)
            self.max_lag_s = max(self.max_lag_s, time.perf_counter() - due)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._beat())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _measure(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int
                   ) -> dict[str, Any]:
    children = {"children": Component(os.getpid(), own=False, children=True)}
    latencies: list[float] = []
    remaining = iter(range(calls))

    async def client() -> None:
        for _ in remaining:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # between requests the gateway's loop runs other work

    before, cpu0, wall0 = snapshot(children)["children"], time.process_time(), time.perf_counter()
    async with _Heartbeat() as heartbeat:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    total_cpu = cpu + snapshot(children)["children"] - before  # children: 10 ms ticks
    return {"calls": calls, "concurrency": concurrency, "wall_s": wall,
            "calls_per_s": calls / wall, "cpu_us_per_call": cpu / calls * 1e6,
            "cpu_with_children_us_per_call": total_cpu / calls * 1e6,
            "calls_per_cpu_s": calls / total_cpu,
            "latency_ms": distribution_ms(latencies),
            "loop_max_lag_ms": heartbeat.max_lag_s * 1000}


def _pickle_cost(prompt_input: PromptInput, built: EnginePrompt, repeat: int) -> dict[str, float]:
    """What a process pool adds per call: the request there and the prompt back, both ways."""
    started = time.process_time()
    for _ in range(repeat):
        pickle.loads(pickle.dumps(prompt_input))
        pickle.loads(pickle.dumps(built))
    return {"cpu_us_per_call": (time.process_time() - started) / repeat * 1e6,
            "result_bytes": len(pickle.dumps(built))}


def _calls_for(size: int) -> int:
    return max(5, min(2000, 2_000_000 // size))


async def run(model_dir: Path, sizes: tuple[int, ...], concurrency: int, seed: int
              ) -> dict[str, Any]:
    served = served_model(model_dir)
    builder = PromptBuilder(Limits())
    builder.tokenizer(served.checkpoint_dir)
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt")
    processes = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_child_init, initargs=(served.checkpoint_dir,))
    inputs = {size: PromptInput.completion(_Prompt(code_text(size, seed))) for size in sizes}

    def strategy(name: str, prompt_input: PromptInput) -> Callable[[], Awaitable[Any]]:
        async def inline() -> EnginePrompt:
            return builder.build(served, prompt_input)

        def on(executor: Executor, fn: Callable[..., EnginePrompt]
               ) -> Callable[[], Awaitable[EnginePrompt]]:
            return lambda: loop.run_in_executor(executor, fn, served, prompt_input)

        return {"inline": inline, "thread": on(threads, builder.build),
                "process": on(processes, _child_build),
                "auto": lambda: builder.build_async(served, prompt_input)}[name]

    try:
        for name in STRATEGIES:  # warm up: children spawned, tokenizers loaded, caches filled
            await _measure(strategy(name, inputs[min(sizes)]), 20, 2)
        out: dict[str, Any] = {}
        for size, prompt_input in inputs.items():
            built = builder.build(served, prompt_input)
            calls = _calls_for(size)
            row: dict[str, Any] = {"chars": size, "prompt_tokens": len(built.token_ids),
                                   "pickle": _pickle_cost(prompt_input, built, min(calls, 200))}
            for name in STRATEGIES:
                call = strategy(name, prompt_input)
                row[name] = {"sequential": await _measure(call, calls, 1),
                             "concurrent": await _measure(call, calls, concurrency)}
                print(f"{size:>9} chars {name:>8}: "
                      f"{row[name]['sequential']['latency_ms']['p50']:9.3f} ms/call, "
                      f"{row[name]['sequential']['cpu_with_children_us_per_call']:9.0f} µs CPU, "
                      f"loop lag {row[name]['sequential']['loop_max_lag_ms']:8.2f} ms, "
                      f"c={concurrency}: {row[name]['concurrent']['calls_per_cpu_s']:8.0f}/CPU-s",
                      file=sys.stderr)
            out[str(size)] = row
        return out
    finally:
        threads.shutdown()
        processes.shutdown()


class _Prompt:
    """The one field `PromptInput.completion` reads from a request."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.offload", description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="prompt sizes in characters, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    results = asyncio.run(run(args.model_dir.resolve(), sizes, args.concurrency, args.seed))
    text = json.dumps({"model_dir": str(args.model_dir), "results": results}, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
