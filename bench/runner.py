"""The client process of one backend: `python -m bench.runner PLAN.json --events-fd N`.

Runs warm-up and every phase of the plan against one backend, one after another, and writes
the records to the plan's `out` file. Progress goes to file descriptor N as JSON lines
(`ready`, `phase_start`, `progress`, `phase_end`, `done`), which the orchestrator (bench.cli)
turns into the progress display, per-process CPU accounting and profiling windows.

A process of its own because vLLM alone must live in the client's process (the engine core is
spawned from it, hence the `__main__` guard below), and so that every backend is driven by a
fresh client process with nothing else in it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from bench import cpu
from bench.backends import make_backend
from bench.load import run_closed, run_phase
from bench.settings import Phase
from bench.workload import Prompt

#: Pause between phases so one phase's stragglers and clean-up do not overlap the next.
SETTLE_S = 1.0
#: Window over which other processes' CPU use is averaged before each phase.
QUIET_WINDOW_S = 2.0


class Events:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def emit(self, event: str, **data: Any) -> None:
        if self._stream is None:
            return
        self._stream.write(json.dumps({"event": event, "t": time.time(), **data}) + "\n")
        self._stream.flush()


async def run_plan(plan: dict[str, Any], events: Events) -> dict[str, Any]:
    prompts = {p["index"]: Prompt.from_json(p) for p in plan["prompts"]}
    output_len = int(plan["output_len"])
    backend = make_backend(plan["backend"], plan["target"])
    started = time.monotonic()
    await backend.start()
    out: dict[str, Any] = {"backend": plan["backend"], "startup_s": time.monotonic() - started,
                           "phases": {}}
    events.emit("ready", startup_s=out["startup_s"])
    try:
        used = [prompts[i] for i in plan["warmup"]]
        for phase in plan["phases"]:
            used += [prompts[i] for i in phase["prompt_indices"]]
        used += [prompts[i] for i in plan.get("spares", [])]
        out["verify"] = {**await backend.verify(used), "prompts_used": len(used)}
        events.emit("verified", **out["verify"])

        warmup = [prompts[i] for i in plan["warmup"]]
        if warmup:
            events.emit("phase_start", phase="warmup", total=len(warmup), measured=False)
            done = 0

            def warm_done(_: int) -> None:
                nonlocal done
                done += 1
                events.emit("progress", phase="warmup", done=done, total=len(warmup))

            await run_closed(backend.run_request, warmup[:1], output_len, 1, warm_done)
            await run_closed(backend.run_request, warmup[1:], output_len,
                             max(1, len(warmup) - 1), warm_done)
            events.emit("phase_end", phase="warmup")
            await asyncio.sleep(SETTLE_S)

        quiet = _quietness(plan)
        spares = iter(plan.get("spares", []))
        for spec in plan["phases"]:
            phase = Phase(spec["name"], spec["kind"], spec["num_requests"],
                          spec.get("concurrency", 0), spec.get("rate", 0.0))
            chosen = [prompts[i] for i in spec["prompt_indices"]]
            attempts: list[dict[str, Any]] = []
            while True:
                waited = await _wait_quiet(quiet, plan, events, phase.name)
                records, duration, other = await _run_once(backend, phase, spec, chosen,
                                                           output_len, quiet, events)
                limit = (plan.get("quiet") or {}).get("cores") or float("inf")
                attempts.append({"duration_s": duration, "other_cores": other,
                                 "waited_s": waited, "disturbed": other >= limit})
                retries = (plan.get("quiet") or {}).get("retries", 0)
                # Unmeasured phases (the profiling repeat: py-spy itself is busy) never retry.
                if other < limit or len(attempts) > retries or not spec.get("measured", True):
                    break
                # Disturbed by other processes: run the phase again on fresh prompts (a prompt
                # is never used twice on one engine, so prefix caching cannot help).
                fresh = [prompts[i] for i in itertools.islice(spares, len(chosen))]
                if len(fresh) < len(chosen):
                    break
                events.emit("retry", phase=phase.name, other_cores=other)
                chosen = fresh
            out["phases"][phase.name] = {
                "duration_s": duration, "measured": spec.get("measured", True),
                "attempts": attempts, "records": [r.to_json() for r in records],
            }
            await asyncio.sleep(SETTLE_S)
    finally:
        await backend.close()
    return out


def _quietness(plan: dict[str, Any]) -> cpu.Quietness:
    """Our processes: this one with its children (engine core) and the plan's components."""
    components = {"client": cpu.Component(os.getpid(), own=True, children=True)}
    for c in plan.get("components", []):
        components[c["name"]] = cpu.Component(c["pid"], own=c.get("own", True),
                                              children=c.get("children", False))
    return cpu.Quietness(components)


async def _wait_quiet(quiet: cpu.Quietness, plan: dict[str, Any], events: Events,
                      phase: str) -> float:
    """Waits until other processes use fewer than the plan's quiet cores (up to max_wait_s)."""
    settings = plan.get("quiet") or {}
    limit, max_wait = settings.get("cores"), settings.get("max_wait_s", 0.0)
    if not limit or not max_wait:
        return 0.0
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        mark = quiet.mark()
        await asyncio.sleep(QUIET_WINDOW_S)
        other = quiet.other_cores_since(mark)
        if other < limit:
            break
        events.emit("waiting", phase=phase, other_cores=other, waited_s=time.monotonic() - t0)
    return time.monotonic() - t0


async def _run_once(backend: Any, phase: Phase, spec: dict[str, Any], chosen: list[Prompt],
                    output_len: int, quiet: cpu.Quietness, events: Events
                    ) -> tuple[list[Any], float, float]:
    events.emit("phase_start", phase=phase.name, total=len(chosen),
                measured=spec.get("measured", True))

    def on_done(count: int) -> None:
        events.emit("progress", phase=phase.name, done=count, total=len(chosen))

    mark = quiet.mark()
    records, duration = await run_phase(backend.run_request, phase, chosen, output_len,
                                        spec.get("seed", 0), on_done)
    other = quiet.other_cores_since(mark)
    failed = sum(1 for r in records if not r.success)
    events.emit("phase_end", phase=phase.name, duration_s=duration, failed=failed,
                other_cores=other)
    if failed == len(records):  # a dead engine or server: the rest would be noise
        raise RuntimeError(f"every request of {phase.name} failed, e.g. "
                           f"{records[0].error.splitlines()[0] if records else ''}")
    return records, duration, other


def run_plan_process(prog: str, run: Callable[[dict[str, Any], Events], Awaitable[Any]],
                     argv: list[str] | None = None) -> int:
    """The body of every measurement process the orchestrator starts: `prog PLAN.json
    [--events-fd N]` runs `run(plan, events)`, reports a failure on the event stream, and
    writes the result to the plan's `out` atomically."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("plan", type=Path)
    parser.add_argument("--events-fd", type=int, default=None)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    stream = os.fdopen(args.events_fd, "w", buffering=1) if args.events_fd is not None else None
    events = Events(stream)
    try:
        out = asyncio.run(run(plan, events))
    except BaseException as exc:
        events.emit("error", message=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc())
        raise
    path = Path(plan["out"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, path)
    events.emit("done")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_plan_process("python -m bench.runner", run_plan, argv)


if __name__ == "__main__":
    raise SystemExit(main())
