"""`fleet up`: the whole fleet on one machine with the demo model, for trying it out."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from fleet_cli.processes import (
    ManagedProcess,
    redis_answers,
    start_gateway,
    start_redis,
    start_worker,
)

DEMO_MODEL = "smollm2-135m-instruct"


def run_up(args: argparse.Namespace) -> int:
    from model_registry.database import migrate, open_engine
    from model_registry.demo_model import prepare_demo_model
    from model_registry.registration import register_model
    from model_registry.store import RegistryStore

    state = Path(args.state_dir).resolve()
    logs = state / "logs"
    processes: list[ManagedProcess] = []
    try:
        if not redis_answers(args.redis_url):
            port = urlparse(args.redis_url).port or 6379
            print(f"no Redis answers at {args.redis_url}; starting redis-server on port {port}")
            processes.append(start_redis(port, logs))
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
        print(f"starting a worker for {DEMO_MODEL} (engine start-up takes about 30 s)...")
        started = time.monotonic()
        processes.append(start_worker("demo-worker", env, logs, redis_url=args.redis_url,
                                      queue=served.queue))
        print(f"worker ready after {time.monotonic() - started:.0f} s")
        gateway, port = start_gateway(env, logs, port=args.port)
        processes.append(gateway)
        print(f"\ngateway on 127.0.0.1:{port}; logs in {logs}\nTry, in another shell:\n"
              f"  .venv/bin/fleet chat --target 127.0.0.1:{port} -m {DEMO_MODEL} "
              f"'Write a Python function that returns the nth Fibonacci number.'\n"
              "Ctrl-C stops the fleet.", flush=True)
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        while not stop["now"] and all(p.alive() for p in processes):
            time.sleep(0.5)
        for p in processes:
            if not p.alive():
                print(f"{p.name} exited:\n{p.log_tail()}", file=sys.stderr)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for p in reversed(processes):
            p.stop()
