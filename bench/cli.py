"""The orchestrator behind `python -m bench run`: one backend at a time, then the gateway alone.

For each backend it starts what the backend needs (nothing for vLLM alone, the OpenAI server,
vLLM's gRPC servicer, the servicer and the SMG router, or Redis + worker + gateway), runs the
client process (`bench.runner`) with the same prompts in the same phases, follows its events
(progress display, per-process CPU time per phase, py-spy during the profiling phase), and
stops everything before the next backend starts, so backends never compete for the machine.
With `--repeat N`, N - 1 further passes rerun the c=1 and c=32 phases on every backend
(reversed order every other pass), for the spread of the ratios. An optional backend
(vllm-grpc, smg) whose packages are missing or that fails is recorded with the reason, and the
run goes on. Then it writes the results, report and plots.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cpu
from bench.backends.fleet import FleetDeployment, create_registry, gateway_env
from bench.backends.vllm_grpc import launch_servicer, servicer_command, servicer_env
from bench.backends.vllm_server import launch_server
from bench.machine import describe
from bench.profiling import PySpy, summarize
from bench.results import assemble
from bench.settings import OPTIONAL_BACKENDS, BenchSettings, Phase
from bench.ui import ProgressUI
from bench.workload import Prompt, fingerprint, make_prompts, stop_ids
from fleet_cli.processes import free_port, spawn, wait_until

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = ("report.md", "results.json")


class BenchError(RuntimeError):
    pass


class BackendFailure(RuntimeError):
    """An optional backend could not run; `info` is what the report shows about it."""

    def __init__(self, backend: str, error: BaseException, raw: dict[str, Any]) -> None:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        summary = f"{type(error).__name__}: {lines[0] if lines else ''}"
        if len(lines) > 1:
            summary += f" ... last log line: {lines[-1]}"
        super().__init__(f"{backend}: {summary}")
        self.backend = backend
        self.info = {"stage": "failed", "error": f"{type(error).__name__}: {error}"[-6000:],
                     "commands": raw.get("commands", {}),
                     "logs": raw.get("logs", {})}


# ------------------------------------------------------------------------------------------
# the plan: which prompts each phase uses (the same for every backend)


def profile_phase(settings: BenchSettings) -> Phase | None:
    """An unmeasured repeat of the highest-concurrency closed phase, for py-spy."""
    closed = [p for p in settings.phases if p.kind == "closed"]
    if not settings.profile or not closed or "fleet" not in settings.backends:
        return None
    top = max(closed, key=lambda p: p.concurrency)
    return Phase(f"profile-{top.name}", "closed", top.num_requests, concurrency=top.concurrency)


def prompt_groups(settings: BenchSettings, extra: Phase | None
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(screened, unscreened) slices as (name, size): the measured phases and the spare
    prompts for their retries are screened; warm-up and the profiling repeat are not."""
    largest = max(p.num_requests for p in settings.phases)
    screened = [(p.name, p.num_requests) for p in settings.phases]
    screened.append(("spares", settings.retry_disturbed * largest))
    unscreened = [("warmup", settings.warmup_requests)]
    if extra is not None:
        unscreened.append((extra.name, extra.num_requests))
    return screened, unscreened


def assign_prompts(settings: BenchSettings, extra: Phase | None) -> dict[str, list[int]]:
    """Consecutive, disjoint slices of the prompt list: each phase, the spares (shared by all
    retries), then warm-up and the profiling repeat."""
    screened, unscreened = prompt_groups(settings, extra)
    out, start = {}, 0
    for name, size in screened + unscreened:
        out[name] = list(range(start, start + size))
        start += size
    return out


def runner_plan(settings: BenchSettings, backend: str, target: dict[str, Any],
                prompts: list[Prompt], slices: dict[str, list[int]], extra: Phase | None,
                out: Path, components: list[dict[str, Any]],
                only: tuple[Phase, ...] | None = None) -> dict[str, Any]:
    """The runner's plan; `only` restricts it to some phases (a repeat pass), with the same
    prompts and seeds as in the first pass."""
    phases = []
    for i, phase in enumerate(settings.phases):
        if only is not None and phase not in only:
            continue
        phases.append({"name": phase.name, "kind": phase.kind, "concurrency": phase.concurrency,
                       "rate": phase.rate, "num_requests": phase.num_requests,
                       "seed": settings.workload.seed * 1000 + i,
                       "prompt_indices": slices[phase.name], "measured": True})
    if extra is not None and backend == "fleet":
        phases.append({"name": extra.name, "kind": "closed", "concurrency": extra.concurrency,
                       "num_requests": extra.num_requests, "prompt_indices": slices[extra.name],
                       "measured": False})
    used = set(slices["warmup"]) | set(slices["spares"]) | {
        i for p in phases for i in p["prompt_indices"]}
    return {"backend": backend, "target": target, "output_len": settings.workload.output_len,
            "prompts": [p.to_json() for p in prompts if p.index in used],
            "warmup": slices["warmup"], "phases": phases, "spares": slices["spares"],
            "components": components, "out": str(out),
            "quiet": {"cores": settings.idle_cores, "max_wait_s": settings.idle_wait_s,
                      "retries": settings.retry_disturbed}}


# ------------------------------------------------------------------------------------------
# child processes with an events pipe


class Child:
    """A `python -m MODULE PLAN --events-fd N` process and its JSON-lines events."""

    def __init__(self, module: str, plan: dict[str, Any], run_dir: Path, name: str,
                 env: dict[str, str]) -> None:
        plan_path = run_dir / f"plan-{name}.json"
        plan_path.write_text(json.dumps(plan))
        self.log_path = run_dir / "logs" / f"client-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        read_fd, write_fd = os.pipe()
        child_env = {**os.environ, **env}
        child_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, str(plan_path), "--events-fd", str(write_fd)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                env=child_env, pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        self._lines: queue.Queue[str | None] = queue.Queue()
        reader = os.fdopen(read_fd, "r")
        threading.Thread(target=self._pump, args=(reader,), daemon=True).start()

    def _pump(self, reader: Any) -> None:
        with reader:
            for line in reader:
                self._lines.put(line)
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self) -> Iterator[dict[str, Any]]:
        """Events until the child exits (its pipe may outlive it in grandchildren)."""
        exited_at: float | None = None
        while True:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 2.0:
                        return
                continue
            if line is None:
                return
            with contextlib.suppress(ValueError):
                yield json.loads(line)

    def finish(self) -> None:
        code = self.process.wait()
        if code != 0:
            raise BenchError(f"{' '.join(self.process.args[:3])} exited with {code}; "
                             f"log {self.log_path}:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def reproduce_command(argv: list[str], screen_prompts: bool) -> str:
    """The command line of this run, quoted for a shell. Screening is always spelled out: its
    default changed (on until 2026-12-01), and a report must say how to get the same prompts."""
    if not any(arg in ("--screen-prompts", "--no-screen-prompts") for arg in argv):
        argv = [*argv, "--screen-prompts" if screen_prompts else "--no-screen-prompts"]
    return shlex.join(["python", "-m", "bench", *argv])


# ------------------------------------------------------------------------------------------
# one backend


#: vLLM's process titles: the engine core (scheduler loop) and the model executor's workers.
ENGINE_CORE = ("VLLM::EngineCor",)  # /proc truncates command names to 15 characters
MODEL_WORKERS = ("VLLM::Worker",)


def _engine(pid: int) -> dict[str, cpu.Component]:
    return {"engine core (scheduler)": cpu.Component(pid, own=False, children=True,
                                                     names=ENGINE_CORE),
            "model executor": cpu.Component(pid, own=False, children=True,
                                            names=MODEL_WORKERS)}


def cpu_components(backend: str, client_pid: int, pids: dict[str, int]) -> dict[str, cpu.Component]:
    if backend == "vllm":
        return {"client + engine front end": cpu.Component(client_pid), **_engine(client_pid)}
    if backend == "vllm-server":
        return {"client": cpu.Component(client_pid),
                "api server": cpu.Component(pids["server"]), **_engine(pids["server"])}
    if backend in ("vllm-grpc", "smg"):
        router = {"smg router": cpu.Component(pids["router"])} if "router" in pids else {}
        return {"client": cpu.Component(client_pid), **router,
                "grpc servicer": cpu.Component(pids["servicer"]), **_engine(pids["servicer"])}
    sink = {"otlp sink": cpu.Component(pids["otlp sink"])} if "otlp sink" in pids else {}
    return {"client": cpu.Component(client_pid), **sink,
            "gateway": cpu.Component(pids["gateway"]),
            "worker (Celery + engine front end)": cpu.Component(pids["worker"]),
            **_engine(pids["worker"]),
            "redis": cpu.Component(pids["redis"])}


def follow_client(label: str, child: Child, components: dict[str, cpu.Component],
                  ui: ProgressUI, raw: dict[str, Any], out: Path) -> None:
    """Follows a phase client's events (progress, per-phase CPU of `components` into
    raw["cpu_s"]) until it ends, then reads its records from `out` into raw["runner"]."""
    before: dict[str, float] = {}
    for event in child.events():
        kind = event["event"]
        if kind == "phase_start":
            before = cpu.snapshot(components)
            ui.phase_start(label, event["phase"], event["total"], event["measured"])
        elif kind == "phase_end":
            raw["cpu_s"][event["phase"]] = cpu.others(
                cpu.difference(cpu.snapshot(components), before))
            ui.phase_end(label, event["phase"],
                         f"{event['duration_s']:.1f} s, {event['failed']} not OK",
                         event["phase"] != f"{label}-warmup")
        elif kind == "error":
            ui.log(f"[red]{label} client failed: {event['message']}")
    child.finish()
    raw["runner"] = json.loads(out.read_text())


def start_otlp_sink(log_dir: Path) -> tuple[Any, dict[str, str]]:
    """The span sink (`bench.otlp_sink`) and the OTEL_* settings that export to it."""
    port_file = log_dir / f"otlp-sink-{os.getpid()}.port"
    port_file.unlink(missing_ok=True)
    sink = spawn("otlp-sink", [sys.executable, "-m", "bench.otlp_sink", "--port-file",
                               str(port_file), "--count-file", str(log_dir / "otlp-spans.txt")],
                 log_dir)
    wait_until(port_file.exists, 30, "the OTLP sink's port", sink)
    return sink, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port_file.read_text()}",
                  "OTEL_EXPORTER_OTLP_INSECURE": "true"}


def wait_for_idle(settings: BenchSettings, ui: ProgressUI, what: str) -> dict[str, float]:
    """Waits (up to settings.idle_wait_s) until the machine is idle; returns what it saw."""
    waited, t0 = 0.0, time.monotonic()
    busy = cpu.busy_cores(2.0)
    while settings.idle_wait_s > 0 and busy >= settings.idle_cores:
        waited = time.monotonic() - t0
        if waited > settings.idle_wait_s:
            ui.log(f"[yellow]machine still busy ({busy:.2f} cores) after {waited:.0f} s; "
                   f"starting {what} anyway")
            break
        ui.step(f"waiting for an idle machine before {what}: {busy:.2f} cores busy "
                f"({waited:.0f} s)")
        busy = cpu.busy_cores(5.0)
    return {"busy_cores_before": busy, "waited_s": time.monotonic() - t0,
            "memory_available_gib": cpu.memory_available_gib() or 0.0}


def _vllm_target(settings: BenchSettings, **extra: Any) -> dict[str, Any]:
    engine = settings.engine
    return {"model_dir": str(engine.model_dir), "dtype": engine.dtype,
            "max_model_len": engine.max_model_len,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "enforce_eager": engine.enforce_eager, "seed": engine.seed,
            "request_timeout_s": settings.request_timeout_s, **extra}


def screen_prompts(settings: BenchSettings, candidates: list[Prompt], run_dir: Path,
                   ui: ProgressUI) -> tuple[list[Prompt], dict[str, Any]]:
    """The candidates whose greedy continuation runs to output_len without a stop token
    (one pass through vLLM alone, with the stop tokens the fleet's completion format uses)."""
    started = time.monotonic()
    output_len = settings.workload.output_len
    stops = stop_ids(settings.engine.model_dir)
    ui.step(f"screening {len(candidates)} prompts (vLLM alone, stop tokens {stops})")
    plan = {"backend": "vllm", "target": _vllm_target(settings, stop_token_ids=stops),
            "output_len": output_len, "prompts": [p.to_json() for p in candidates],
            "warmup": [], "spares": [], "components": [], "out": str(run_dir / "screen.json"),
            "phases": [{"name": "screen", "kind": "closed",
                        "concurrency": settings.screen_concurrency,
                        "num_requests": len(candidates), "measured": False,
                        "prompt_indices": [p.index for p in candidates]}]}
    child = Child("bench.runner", plan, run_dir, "screen", settings.engine.env())
    try:
        for event in child.events():
            if event["event"] == "phase_start":
                ui.phase_start("screening", event["phase"], event["total"], False)
            elif event["event"] == "progress":
                ui.phase_progress(event["done"])
            elif event["event"] == "phase_end":
                ui.phase_end("screening", event["phase"], f"{event['duration_s']:.1f} s", False)
            elif event["event"] == "error":
                ui.log(f"[red]screening failed: {event['message']}")
        child.finish()
    except BaseException:
        child.kill()
        raise
    records = json.loads(Path(plan["out"]).read_text())["phases"]["screen"]["records"]
    full = {r["index"] for r in records if r["success"] and r["output_tokens"] == output_len}
    clean = [p for p in candidates if p.index in full]
    info = {"candidates": len(candidates), "kept": len(clean),
            "stopped_early": len(candidates) - len(clean), "stop_token_ids": stops,
            "seconds": time.monotonic() - started}
    ui.log(f"screening: {info['stopped_early']} of {len(candidates)} prompts reached a stop "
           f"token within {output_len} tokens and were dropped")
    return clean, info


def make_workload(settings: BenchSettings, extra: Phase | None, run_dir: Path, ui: ProgressUI
                  ) -> tuple[list[Prompt], dict[str, Any]]:
    """The run's prompts, indexed as `assign_prompts` expects (screened ones first)."""
    screened, unscreened = prompt_groups(settings, extra)
    n_screened = sum(size for _, size in screened)
    n_plain = sum(size for _, size in unscreened)
    w = settings.workload
    if not settings.screen_prompts:
        ui.step(f"making {n_screened + n_plain} prompts of {w.input_len} tokens")
        return make_prompts(settings.engine.model_dir, n_screened + n_plain, w.input_len,
                            w.seed), {}
    n_candidates = int(n_screened * 1.15) + 8  # a few percent reach a stop token
    ui.step(f"making {n_candidates + n_plain} prompts of {w.input_len} tokens")
    candidates = make_prompts(settings.engine.model_dir, n_candidates + n_plain, w.input_len,
                              w.seed)
    clean, info = screen_prompts(settings, candidates[:n_candidates], run_dir, ui)
    if len(clean) < n_screened:
        ui.log(f"[yellow]only {len(clean)} clean prompts for {n_screened}; topping up with "
               "unscreened ones")
        dropped = [p for p in candidates[:n_candidates] if p not in clean]
        clean += dropped[: n_screened - len(clean)]
    chosen = clean[:n_screened] + candidates[n_candidates:n_candidates + n_plain]
    return [Prompt(i, p.text, p.token_ids) for i, p in enumerate(chosen)], info


def run_backend(backend: str, settings: BenchSettings, prompts: list[Prompt],
                slices: dict[str, list[int]], extra: Phase | None, run_dir: Path,
                ui: ProgressUI, only: tuple[Phase, ...] | None = None) -> dict[str, Any]:
    """One backend, started, measured and stopped; `only` restricts the phases (a repeat
    pass, which runs in its own directory). An optional backend that fails raises
    BackendFailure with what the report needs to say why."""
    engine = settings.engine
    idle = wait_for_idle(settings, ui, backend)
    started = time.monotonic()
    server: Any = None
    servicer: Any = None
    router: Any = None
    otlp_sink: Any = None
    deployment: FleetDeployment | None = None
    pids: dict[str, int] = {}
    child: Child | None = None
    raw: dict[str, Any] = {"cpu_s": {}, "startup_s": {}, "machine_before": idle,
                           "commands": {}, "logs": {}}
    profilers: dict[str, PySpy] = {}
    try:
        if backend in ("vllm-grpc", "smg"):
            from bench.backends.smg_router import launch_router, router_command

            ui.step(f"{backend}: starting vLLM's gRPC servicer (engine load, its warm-up)")
            port = free_port()
            env = servicer_env(engine, settings.smg.servicer_impl)
            raw["commands"]["servicer"] = " ".join(
                [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
                + [shlex.join(servicer_command(engine, port))])
            raw["logs"]["servicer"] = str(run_dir / "logs" / f"{backend}-servicer.log")
            servicer = launch_servicer(engine, run_dir / "logs", settings.smg.servicer_impl,
                                       port, name=f"{backend}-servicer").process
            pids["servicer"] = servicer.process.pid
            target = {"target": f"127.0.0.1:{port}",
                      "request_timeout_s": settings.request_timeout_s}
            if backend == "smg":
                ui.step("smg: starting the SMG router in front of the servicer")
                raw["logs"]["router"] = str(run_dir / "logs" / "smg-router.log")
                ports = (free_port(), free_port())
                raw["commands"]["router"] = shlex.join(router_command(
                    f"127.0.0.1:{port}", engine.model_dir, *ports, settings.fleet_log_level,
                    settings.smg.policy))
                launched = launch_router(f"127.0.0.1:{port}", engine.model_dir,
                                         run_dir / "logs", engine.startup_timeout_s,
                                         settings.fleet_log_level, settings.smg.policy, ports)
                router = launched.process
                pids["router"] = router.process.pid
                target = {"base_url": launched.base_url, "model_name": engine.model_name,
                          "input_mode": settings.smg.input_mode,
                          "request_timeout_s": settings.request_timeout_s}
        elif backend == "vllm":
            target = _vllm_target(settings)
            ui.step("vLLM alone: starting the client process and its engine")
        elif backend == "vllm-server":
            ui.step("vLLM server: starting (engine load)")
            server, base = launch_server(engine, run_dir / "logs")
            pids["server"] = server.process.pid
            target = {"base_url": base, "model_name": engine.model_name,
                      "request_timeout_s": settings.request_timeout_s}
        else:
            tracing_env: dict[str, str] = {}
            if backend == "fleet-traced":
                ui.step("fleet-traced: starting the OTLP sink its spans are exported to")
                otlp_sink, tracing_env = start_otlp_sink(run_dir / "logs")
                pids["otlp sink"] = otlp_sink.process.pid
            deployment = FleetDeployment.start(engine, run_dir, settings.fleet_log_level,
                                               on_step=lambda m: ui.step(f"{backend}: {m}"),
                                               worker_env=tracing_env or None,
                                               gateway_extra_env=tracing_env or None)
            pids.update(deployment.pids())
            target = {"target": deployment.target, "model_name": engine.model_name,
                      "request_timeout_s": settings.request_timeout_s}
        raw["startup_s"]["infrastructure"] = time.monotonic() - started
        ours = [{"name": name, "pid": pid, "children": name in ("server", "worker", "servicer")}
                for name, pid in pids.items()]
        plan = runner_plan(settings, backend, target, prompts, slices,
                           extra if only is None else None,
                           run_dir / f"records-{backend}.json", ours, only)
        env = engine.env() if backend == "vllm" else {}
        child = Child("bench.runner", plan, run_dir, backend, env)
        components = cpu_components(backend, child.pid, pids)
        raw["components"] = {name: {"pid": c.pid, "children": c.children}
                             for name, c in components.items()}
        before: dict[str, float] = {}
        for event in child.events():
            kind = event["event"]
            if kind == "ready":
                ui.step(f"{backend}: client ready in {event['startup_s']:.1f} s; checking prompts")
            elif kind == "phase_start":
                before = cpu.snapshot(components)
                ui.phase_start(backend, event["phase"], event["total"], event["measured"])
                if extra is not None and event["phase"] == extra.name and deployment:
                    profilers = _start_profilers(pids, run_dir, ui)
            elif kind == "progress":
                ui.phase_progress(event["done"])
            elif kind == "phase_end":
                used = cpu.others(cpu.difference(cpu.snapshot(components), before))
                raw["cpu_s"][event["phase"]] = used
                name = event["phase"]
                if profilers:
                    raw["profile"] = _stop_profilers(profilers, name, ui)
                    profilers = {}
                summary = (f"{event.get('duration_s', 0):.1f} s, {event.get('failed', 0)} "
                           f"failed, other processes {event.get('other_cores', 0):.2f} cores"
                           if "duration_s" in event else "done")
                measured = name in slices and name not in ("warmup",) and (
                    extra is None or name != extra.name)
                ui.phase_end(backend, name, summary, measured)
            elif kind == "waiting":
                ui.step(f"{backend}: other processes keep {event['other_cores']:.2f} cores busy;"
                        f" waiting before {event['phase']} ({event['waited_s']:.0f} s)")
            elif kind == "retry":
                ui.phase_retry(backend, event["phase"], f"other processes used "
                               f"{event['other_cores']:.2f} cores during it; running it again")
            elif kind == "error":
                ui.log(f"[red]{backend} client failed: {event['message']}")
        child.finish()
        raw["runner"] = json.loads(Path(plan["out"]).read_text())
        return raw
    except BaseException as exc:
        if child is not None:
            child.kill()
        if backend in OPTIONAL_BACKENDS and isinstance(exc, Exception):
            raise BackendFailure(backend, exc, raw) from exc
        raise
    finally:
        for profiler in profilers.values():
            profiler.stop()
        ui.step(f"{backend}: stopping")
        if server is not None:
            server.stop()
        if router is not None:
            router.stop()
        if servicer is not None:
            servicer.stop()
        if deployment is not None:
            deployment.stop()
        if otlp_sink is not None:  # after the fleet, whose last spans it still takes
            otlp_sink.stop()
            spans = run_dir / "logs" / "otlp-spans.txt"
            if spans.exists():
                raw["otlp_spans"] = int(spans.read_text() or 0)
        raw["startup_s"]["total_backend_s"] = time.monotonic() - started


def _start_profilers(pids: dict[str, int], run_dir: Path, ui: ProgressUI) -> dict[str, PySpy]:
    profilers = {}
    for name in ("gateway", "worker"):
        try:
            profilers[name] = PySpy.start(pids[name], run_dir / "profiles" / f"{name}.folded.txt")
        except Exception as exc:  # noqa: BLE001 - profiling is optional
            ui.log(f"[yellow]py-spy could not attach to the {name}: {exc}")
    return profilers


def _stop_profilers(profilers: dict[str, PySpy], phase: str, ui: ProgressUI) -> dict[str, Any]:
    out: dict[str, Any] = {"phase": phase, "processes": {}}
    for name, profiler in profilers.items():
        if profiler.stop() and profiler.out.stat().st_size > 0:
            out["processes"][name] = {"file": str(profiler.out), **summarize(profiler.out)}
        else:
            tail = profiler.log.read_text(errors="replace")[-500:] if profiler.log.exists() \
                else ""
            ui.log(f"[yellow]py-spy wrote nothing for the {name}: {tail}")
    return out


# ------------------------------------------------------------------------------------------
# the gateway alone


def run_admission(settings: BenchSettings, prompts: list[Prompt], run_dir: Path,
                  ui: ProgressUI) -> dict[str, Any]:
    from bench.admission import fake_live_worker
    from fleet_cli.processes import free_port, start_gateway, start_redis

    a = settings.admission
    idle = wait_for_idle(settings, ui, "the gateway-alone measurement")
    log_dir = run_dir / "logs"
    registry = create_registry(run_dir / "registry.db", settings.engine)
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    ui.step("gateway alone: starting Redis and a gateway (no worker)")
    redis_proc = start_redis(port, log_dir)
    gateway = None
    child = None
    profilers: dict[str, PySpy] = {}
    try:
        fake_live_worker(redis_url, registry.queue)
        gateway, gport = start_gateway(gateway_env(registry, redis_url, settings.fleet_log_level),
                                       log_dir)
        plan = {"target": f"127.0.0.1:{gport}", "model_name": settings.engine.model_name,
                "texts": [p.text for p in prompts], "max_tokens": a.max_tokens,
                "grpc_requests": a.grpc_requests, "grpc_concurrency": a.grpc_concurrency,
                "inprocess_requests": a.inprocess_requests,
                "inprocess_concurrency": a.inprocess_concurrency,
                "gateway_pid": gateway.process.pid, "redis_url": redis_url,
                "registry_url": registry.url, "queue": registry.queue,
                "profile": settings.profile, "out": str(run_dir / "admission.json")}
        child = Child("bench.admission", plan, run_dir, "admission", {})
        current = ""
        profiles: dict[str, Any] = {}
        for event in child.events():
            kind = event["event"]
            if kind == "phase_start":
                current = event["phase"]
                ui.phase_start("gateway alone", current, event["total"], event["measured"])
                if current.endswith("-profile"):
                    pid = gateway.process.pid if "grpc" in current else child.pid
                    name = "gateway" if "grpc" in current else "admission client (in-process)"
                    try:
                        profilers = {name: PySpy.start(
                            pid, run_dir / "profiles" / f"{current}.folded.txt")}
                    except Exception as exc:  # noqa: BLE001 - profiling is optional
                        ui.log(f"[yellow]py-spy could not attach: {exc}")
            elif kind == "progress" and event["phase"] == current:
                ui.phase_progress(event["done"])
            elif kind == "progress":
                ui.step(f"gateway alone: {event['phase']} {event['done']}/{event['total']}")
            elif kind == "phase_end":
                if profilers:
                    profiles[event["phase"]] = _stop_profilers(profilers, event["phase"], ui)
                    profilers = {}
                ui.phase_end("gateway alone", event["phase"],
                             f"{event['duration_s']:.1f} s, {event['failed']} failed",
                             not event["phase"].endswith("-profile"))
            elif kind == "error":
                ui.log(f"[red]admission client failed: {event['message']}")
        child.finish()
        out = {**json.loads(Path(plan["out"]).read_text()), "machine_before": idle}
        if profiles:
            out["profile"] = profiles
        return out
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        for profiler in profilers.values():
            profiler.stop()
        ui.step("gateway alone: stopping")
        if gateway is not None:
            gateway.stop()
        redis_proc.stop()


# ------------------------------------------------------------------------------------------
# the fleet past its capacity


def run_overload(settings: BenchSettings, run_dir: Path, ui: ProgressUI) -> dict[str, Any]:
    """One worker of `capacity` slots, a gateway with admission control (and one without, for
    the baseline): `bench.overload` drives them; returns its records and per-phase CPU."""
    from fleet_cli.processes import start_gateway

    o = settings.overload
    assert o is not None
    idle = wait_for_idle(settings, ui, "the overload measurement")
    (run_dir / "overload").mkdir(parents=True, exist_ok=True)
    ui.step(f"overload: starting a fleet with one worker of capacity {o.capacity}")
    deployment = FleetDeployment.start(
        settings.engine, run_dir / "overload", settings.fleet_log_level,
        on_step=lambda m: ui.step(f"overload: {m}"),
        worker_env={"FLEET_CONCURRENCY": str(o.capacity)},
        gateway_extra_env={"FLEET_ADMISSION_QUEUE_FACTOR": f"{o.queue_factor:g}"})
    baseline = None
    child = None
    raw: dict[str, Any] = {"machine_before": idle, "cpu_s": {}}
    try:
        targets = {"admission": deployment.target}
        if o.baseline:
            ui.step("overload: starting a second gateway, admission control off")
            baseline, bport = start_gateway(
                {**gateway_env(deployment.registry, deployment.redis_url,
                               settings.fleet_log_level), "FLEET_ADMISSION_CONTROL": "false"},
                run_dir / "overload" / "logs")
            targets["baseline"] = f"127.0.0.1:{bport}"
        plan = {"targets": targets, "model_name": settings.engine.model_name,
                "model_dir": str(settings.engine.model_dir), "input_len": o.input_len,
                "output_len": o.output_len, "seed": settings.workload.seed,
                "capacity": o.capacity, "factor": o.factor, "seconds": o.seconds,
                "deadline_s": o.deadline_s, "warmup_waves": o.warmup_waves,
                "redis_url": deployment.redis_url, "queue": deployment.registry.queue,
                "out": str(run_dir / "overload.json")}
        child = Child("bench.overload", plan, run_dir, "overload", {})
        pids = deployment.pids()
        components = cpu_components("fleet", child.pid, pids)
        if baseline is not None:
            components["gateway (admission off)"] = cpu.Component(baseline.process.pid)
        follow_client("overload", child, components, ui, raw, Path(plan["out"]))
        return raw
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        ui.step("overload: stopping")
        if baseline is not None:
            baseline.stop()
        deployment.stop()


# ------------------------------------------------------------------------------------------
# optional backends and repeat passes


def optional_unavailable(backends: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The optional backends asked for whose packages are missing, with the reason."""
    from bench.backends import smg_router, vllm_grpc

    out: dict[str, dict[str, Any]] = {}
    for backend in backends:
        if backend not in OPTIONAL_BACKENDS:
            continue
        reason = vllm_grpc.unavailable()
        if reason is None and backend == "smg":
            reason = smg_router.unavailable()
        if reason is not None:
            out[backend] = {"stage": "not installed", "reason": reason}
    return out


def pass_order(backends: list[str], number: int) -> list[str]:
    """Backends in pass `number` (1-based): forward in odd passes, reversed in even ones, so
    that drift of the machine over the run does not favour the backends that run first."""
    return list(backends) if number % 2 else list(reversed(backends))


def run_repeats(settings: BenchSettings, prompts: list[Prompt], slices: dict[str, list[int]],
                run_dir: Path, ui: ProgressUI, backends: list[str],
                unavailable: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Passes 2..repeat: the repeat phases on every backend that ran, each pass in its own
    directory (`repeat-N/`), with the same prompts as the first pass (each pass starts every
    engine afresh, so no prompt meets a warm prefix cache)."""
    only = settings.repeat_phases()
    passes: list[dict[str, Any]] = []
    for number in range(2, settings.repeat + 1):
        pass_dir = run_dir / f"repeat-{number}"
        (pass_dir / "logs").mkdir(parents=True, exist_ok=True)
        done: dict[str, Any] = {"pass": number, "order": pass_order(backends, number),
                                "backends": {}, "failed": {}}
        for backend in done["order"]:
            ui.step(f"repeat {number}/{settings.repeat}: {backend}")
            try:
                done["backends"][backend] = run_backend(backend, settings, prompts, slices,
                                                        None, pass_dir, ui, only)
            except BackendFailure as failure:
                done["failed"][backend] = str(failure).splitlines()[0]
                ui.log(f"[yellow]repeat {number}: {backend} failed: {failure}"[:400])
        passes.append(done)
    return passes


# ------------------------------------------------------------------------------------------
# the whole run


def _write_records(raw: dict[str, Any], path: Path) -> None:
    full: dict[str, Any] = {name: data["runner"] for name, data in raw.items()
                            if isinstance(data, dict) and "runner" in data}
    full["repeats"] = [{"pass": done["pass"], **{b: data["runner"] for b, data in
                                                  done["backends"].items()}}
                       for done in raw.get("repeats") or []]
    with gzip.open(path, "wt") as fh:
        json.dump(full, fh)


def publish(run_dir: Path, dest: Path) -> None:
    """Copies the report, the JSON and the plots to `dest` (the repository's latest)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()
    for name in PUBLISHED:
        shutil.copy2(run_dir / name, dest / name)
    for png in run_dir.glob("*.png"):
        shutil.copy2(png, dest / png.name)


def run(settings: BenchSettings) -> Path:
    """Runs the benchmark; returns the run directory (results.json, report.md, *.png)."""
    from bench import plots, report

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (settings.out_dir / stamp).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    extra = profile_phase(settings)
    slices = assign_prompts(settings, extra)
    count = sum(len(v) for v in slices.values())
    repeats = settings.repeat_phases()
    measured = (len(settings.phases) + len(repeats) * (settings.repeat - 1)) * len(
        settings.backends) + (
        2 if settings.admission.grpc_requests or settings.admission.inprocess_requests else 0)
    if settings.overload is not None:
        measured += 3 if settings.overload.baseline else 2
    if settings.fairness is not None:
        from bench.fairness_run import measured_phases, run_fairness

        measured += measured_phases(settings)
    raw: dict[str, Any] = {}
    with ProgressUI(settings.progress, measured) as ui:
        prompts, screening = make_workload(settings, extra, run_dir, ui)
        machine = describe(REPO)
        if settings.code_version:
            machine["git_commit"] = settings.code_version
        unavailable = optional_unavailable(settings.backends)
        for backend, info in unavailable.items():
            ui.log(f"[yellow]{backend} skipped: {info['reason']}")
        for backend in settings.backends:
            if backend in unavailable:
                continue
            try:
                raw[backend] = run_backend(backend, settings, prompts, slices, extra, run_dir,
                                           ui)
            except BackendFailure as failure:
                unavailable[backend] = {**failure.info, "reason": str(failure).splitlines()[0]}
                ui.log(f"[yellow]{backend} could not run; going on without it: "
                       f"{unavailable[backend]['reason'][:300]}")
        raw["repeats"] = run_repeats(settings, prompts, slices, run_dir, ui,
                                     [b for b in settings.backends if b in raw], unavailable)
        raw["unavailable"] = unavailable
        if settings.admission.grpc_requests or settings.admission.inprocess_requests:
            raw["admission"] = run_admission(settings, prompts, run_dir, ui)
        if settings.overload is not None:
            raw["overload"] = run_overload(settings, run_dir, ui)
        if settings.fairness is not None:
            raw["fairness"] = run_fairness(settings, run_dir, ui)
        ui.step("writing results, plots and report")
        workload = {"input_len": settings.workload.input_len,
                    "output_len": settings.workload.output_len, "seed": settings.workload.seed,
                    "prompts": count, "fingerprint": fingerprint(prompts),
                    "screening": screening,
                    "example_prompt": prompts[0].text[:200]}
        timing = {"started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                  "wall_s": time.monotonic() - t0, "run_dir": str(run_dir),
                  "command": reproduce_command(sys.argv[1:], settings.screen_prompts)}
        results = assemble(settings, raw, machine, workload, timing)
        (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        _write_records(raw, run_dir / "records.json.gz")
        if results["backends"]:  # the plots compare backends; an overload-only run has none
            plots.render_all(results, run_dir)
        report.write(results, run_dir)
        if settings.publish_dir is not None:
            publish(run_dir, settings.publish_dir)
        ui.step("")
        ui.log(f"results in {run_dir}" + (f", published to {settings.publish_dir}"
                                          if settings.publish_dir else ""))
    return run_dir
