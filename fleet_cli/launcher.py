"""`fleet up`: the whole fleet on one machine with the demo model, for trying it out.

A worker that exits is restarted, as Kubernetes would restart its pod; the gateway or Redis
exiting stops the fleet. Ctrl-C or SIGTERM stops it in the order that drains it (see
`stop_in_drain_order`); a second one kills what is left at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from fleet_cli.processes import (
    ManagedProcess,
    redis_answers,
    spawn_worker,
    start_gateway,
    start_redis,
    start_worker,
)
from workers.runtime import STOP_MARGIN_S

DEMO_MODEL = "smollm2-135m-instruct"
WORKER = "demo-worker"
DRAIN_GRACE_S = 30.0  # the demo worker's FLEET_DRAIN_GRACE_S
WORKER_STOP_S = DRAIN_GRACE_S + STOP_MARGIN_S + 15.0  # + Celery's own stop
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_RUN_S = 60.0  # a worker that ran this long before exiting is restarted at once


@dataclass
class RestartingWorker:
    """A worker restarted whenever it exits: after BACKOFF_FIRST_S, doubled for each exit that
    follows a short run, at most BACKOFF_MAX_S."""

    spawn: Callable[[], ManagedProcess]
    process: ManagedProcess
    started_at: float = field(default_factory=time.monotonic)
    quick_exits: int = 0
    restart_at: float | None = None

    def poll(self, now: float) -> None:
        """Notices an exit, and restarts the worker once its backoff has passed."""
        if self.restart_at is None:
            if self.process.alive():
                return
            if now - self.started_at >= STABLE_RUN_S:
                self.quick_exits = 0
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** self.quick_exits)
            self.quick_exits += 1
            self.restart_at = now + delay
            print(f"{self.process.name} exited with code {self.process.process.returncode}; "
                  f"restarting it in {delay:.0f} s. Its last lines:\n{self.process.log_tail()}",
                  file=sys.stderr, flush=True)
            self.process.stop()  # reaps it and kills what it left behind (engine processes)
        elif now >= self.restart_at:
            self.process = self.spawn()
            self.started_at, self.restart_at = now, None
            print(f"restarted {self.process.name} (pid {self.process.process.pid})", flush=True)


def stop_in_drain_order(gateway: ManagedProcess | None, workers: list[RestartingWorker],
                        redis: ManagedProcess | None) -> None:
    """The gateway first: it stops taking requests and gives the calls in flight its grace.
    Then the workers, each draining: it finishes what it holds (up to its grace), returns what
    it had not started to the queue and stops its engine. Redis last: everything above talks
    through it. An interrupt (a second Ctrl-C) while waiting kills what is left at once."""
    ordered = [(gateway, 30.0), *((w.process, WORKER_STOP_S) for w in workers), (redis, 30.0)]
    try:
        for process, timeout in ordered:
            if process is not None:
                process.stop(timeout=timeout)
    except KeyboardInterrupt:
        for process, _ in ordered:
            if process is not None:
                process.stop(timeout=0)


def run_up(args: argparse.Namespace) -> int:
    from demo.smollm2 import prepare_demo_model
    from model_registry.database import migrate, open_engine
    from model_registry.registration import register_model
    from model_registry.store import RegistryStore

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    state = Path(args.state_dir).resolve()
    logs = state / "logs"
    redis_process: ManagedProcess | None = None
    gateway: ManagedProcess | None = None
    workers: list[RestartingWorker] = []
    try:
        if not redis_answers(args.redis_url):
            port = urlparse(args.redis_url).port or 6379
            print(f"no Redis answers at {args.redis_url}; starting redis-server on port {port}")
            redis_process = start_redis(port, logs)
        registry_url = f"sqlite:///{state / 'registry.db'}"
        engine = open_engine(registry_url)
        migrate(engine)
        store = RegistryStore(engine)
        store.ensure_default_pools()
        checkpoint = prepare_demo_model(state / "models" / DEMO_MODEL, state / "downloads")
        register_model(store, model=DEMO_MODEL, version="v1", checkpoint_dir=checkpoint,
                       pool="7b", progress=True)
        served = store.get_version(DEMO_MODEL)
        env = {"FLEET_REGISTRY_URL": registry_url, "FLEET_REDIS_URL": args.redis_url,
               "FLEET_MODEL": DEMO_MODEL, "FLEET_ENFORCE_EAGER": "true",
               "FLEET_KV_CACHE_GIB": "2"}
        worker_env = {**env, "FLEET_DRAIN_GRACE_S": str(DRAIN_GRACE_S)}
        print(f"starting a worker for {DEMO_MODEL} (engine start-up takes about 30 s)...")
        started = time.monotonic()
        workers.append(RestartingWorker(
            spawn=lambda: spawn_worker(WORKER, worker_env, logs, redis_url=args.redis_url),
            process=start_worker(WORKER, worker_env, logs, redis_url=args.redis_url,
                                 queue=served.queue)))
        print(f"worker ready after {time.monotonic() - started:.0f} s")
        # Batch jobs (JobService) in the registry's database, as one machine's fleet has one;
        # webhooks may go to this machine (examples/review_bot's receiver).
        gateway, port = start_gateway({**env, "FLEET_JOBS_DATABASE_URL": registry_url,
                                       "FLEET_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]'}, logs,
                                      port=args.port)
        print(f"\ngateway on 127.0.0.1:{port}; logs in {logs}\nTry, in another shell:\n"
              f"  .venv/bin/fleet chat --target 127.0.0.1:{port} -m {DEMO_MODEL} "
              f"'Write a Python function that returns the nth Fibonacci number.'\n"
              "Ctrl-C stops the fleet.", flush=True)
        while True:
            for essential in (gateway, redis_process):
                if essential is not None and not essential.alive():
                    print(f"{essential.name} exited:\n{essential.log_tail()}", file=sys.stderr)
                    return 1
            for worker in workers:
                worker.poll(time.monotonic())
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            print("stopping the fleet: gateway, then workers (draining), then Redis", flush=True)
        except OSError:  # whoever read our output is gone; the fleet must stop all the same
            pass
        stop_in_drain_order(gateway, workers, redis_process)
