"""The orchestrator's side of the fairness phase (`python -m bench run --fairness`).

Starts one worker whose capacity is `FairnessSettings.capacity` (FLEET_CAPACITY, so admission
control knows it) plus `reserve` slots for tenants under their fair share
(FLEET_FAIR_SHARE_RESERVE; FLEET_CONCURRENCY and FLEET_MAX_NUM_SEQS are the sum, so the engine
runs no more than the worker takes), a gateway with admission control at
`queue_factor` whose tenants are the registry's: tenant-a (policy `max_concurrent` =
`FairnessSettings.a_quota`, 0: none), tenant-b and tenant-probe (no quota; the warm-up, the
capacity probe and the FIFO control), each with one inference key, created in the fleet's
registry database before any process starts (no FLEET_API_KEYS), and, for
the `-no-admission` phase, a second gateway on the same Redis with admission control off;
runs `bench.fairness` against them, following its events for the progress display and the CPU
of each process per phase; returns its records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import cpu
from bench.backends.fleet import FleetDeployment, Registry, gateway_env
from bench.cli import Child, cpu_components, follow_client, wait_for_idle
from bench.fairness_metrics import PROBE, A, B
from bench.settings import BenchSettings
from bench.ui import ProgressUI


def create_tenants(registry: Registry, a_max_concurrent: int) -> dict[str, str]:
    """Tenants A (max_concurrent `a_max_concurrent`, 0: no quota), B and the probe's in the
    registry, one inference key each; returns tenant -> key (the secret)."""
    from model_registry.api_keys import INFERENCE
    from model_registry.database import open_engine
    from model_registry.store import RegistryStore
    from model_registry.tenants import TenantStore

    db = open_engine(registry.url)
    try:
        tenants = TenantStore(RegistryStore(db))
        keys: dict[str, str] = {}
        for tenant in (A, B, PROBE):
            policy = {"max_concurrent": a_max_concurrent} if tenant == A else {}
            tenants.create_tenant(tenant, actor="bench", policy=policy)
            _, keys[tenant] = tenants.create_key(tenant, "bench", [INFERENCE], actor="bench")
        return keys
    finally:
        db.dispose()


def measured_phases(settings: BenchSettings) -> int:
    f = settings.fairness
    if f is None:
        return 0
    return 3 + int(f.no_admission) + int(f.fifo) + int(f.a_alone)


def run_fairness(settings: BenchSettings, run_dir: Path, ui: ProgressUI) -> dict[str, Any]:
    from fleet_cli.processes import start_gateway

    f = settings.fairness
    assert f is not None
    idle = wait_for_idle(settings, ui, "the fairness measurement")
    home = run_dir / "fairness"
    home.mkdir(parents=True, exist_ok=True)
    quota = f.a_quota
    ui.step(f"fairness: starting a fleet with one worker of capacity {f.capacity}, tenant A "
            f"with max_concurrent {quota or 'unlimited'}, B unlimited")
    slots = str(f.capacity + f.reserve)
    keys: dict[str, str] = {}
    deployment = FleetDeployment.start(
        settings.engine, home, settings.fleet_log_level,
        on_step=lambda m: ui.step(f"fairness: {m}"),
        worker_env={"FLEET_CONCURRENCY": slots, "FLEET_MAX_NUM_SEQS": slots,
                    "FLEET_CAPACITY": str(f.capacity),
                    "FLEET_FAIR_SHARE_RESERVE": str(f.reserve)},
        gateway_extra_env={"FLEET_ADMISSION_QUEUE_FACTOR": f"{f.queue_factor:g}"},
        prepare_registry=lambda registry: keys.update(create_tenants(registry, quota)))
    second = None
    child = None
    raw: dict[str, Any] = {"machine_before": idle, "cpu_s": {}}
    try:
        targets = {"admission": deployment.target}
        if f.no_admission:
            ui.step("fairness: starting a second gateway, admission control off")
            second, port = start_gateway(
                {**gateway_env(deployment.registry, deployment.redis_url,
                               settings.fleet_log_level),
                 "FLEET_ADMISSION_CONTROL": "false"}, home / "logs")
            targets["no-admission"] = f"127.0.0.1:{port}"
        plan = {"targets": targets, "keys": keys, "a_max_concurrent": quota,
                "model_name": settings.engine.model_name,
                "model_dir": str(settings.engine.model_dir), "input_len": f.input_len,
                "output_len": f.output_len, "seed": settings.workload.seed,
                "capacity": f.capacity, "seconds": f.seconds,
                "probe_seconds": f.probe_seconds, "b_rate": f.b_rate, "b_share": f.b_share,
                "a_multiple": f.a_multiple, "a_alone": f.a_alone, "fifo": f.fifo,
                "deadline_s": f.deadline_s,
                "warmup_waves": f.warmup_waves, "redis_url": deployment.redis_url,
                "queue": deployment.registry.queue, "out": str(run_dir / "fairness.json")}
        child = Child("bench.fairness", plan, run_dir, "fairness", {})
        components = cpu_components("fleet", child.pid, deployment.pids())
        if second is not None:
            components["gateway (admission off)"] = cpu.Component(second.process.pid)
        follow_client("fairness", child, components, ui, raw, Path(plan["out"]))
        return raw
    except BaseException:
        if child is not None:
            child.kill()
        raise
    finally:
        ui.step("fairness: stopping")
        if second is not None:
            second.stop()
        deployment.stop()
