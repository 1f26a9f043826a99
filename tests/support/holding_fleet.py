"""What the tests around a holding worker (`tests.support.holding_worker`) share: a SQLite
registry with one tiny model registered, and the worker process serving it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from fleet_cli.processes import ManagedProcess, spawn
from model_registry.database import migrate, open_engine
from model_registry.records import ServedModel
from model_registry.registration import register_model
from model_registry.store import RegistryStore
from tests.conftest import REPO_ROOT
from tests.e2e.fleet_harness import ENGINE_ENV
from tests.support.holding_worker import RELEASE_FILE


def registry_with_model(directory: Path, model: str, checkpoint_dir: Path,
                        prepare: Callable[[RegistryStore], object] | None = None
                        ) -> tuple[str, ServedModel]:
    """(URL, the served version) of a new registry in `directory` with `model`@v1 on the
    checkpoint; `prepare` may add to the store (tenants) before it is closed."""
    registry_url = f"sqlite:///{directory / 'registry.db'}"
    engine = open_engine(registry_url)
    try:
        migrate(engine)
        store = RegistryStore(engine)
        store.ensure_default_pools()
        served = register_model(store, model=model, version="v1", checkpoint_dir=checkpoint_dir,
                                variant="codellama-7b-instruct", context_limit=2048,
                                dtype="float32")
        if prepare is not None:
            prepare(store)
    finally:
        engine.dispose()
    return registry_url, served


def spawn_holding_worker(name: str, *, registry_url: str, model: str, redis_url: str,
                         release: Path, log_dir: Path, env: dict[str, str] | None = None
                         ) -> ManagedProcess:
    """The real worker process with the holding engine, released by `release`; not waited for."""
    return spawn("worker-holding", [sys.executable, "-m", "tests.support.holding_worker"], log_dir,
                 {**ENGINE_ENV, "FLEET_REGISTRY_URL": registry_url, "FLEET_MODEL": model,
                  "FLEET_WORKER_NAME": name, "FLEET_REDIS_URL": redis_url,
                  RELEASE_FILE: str(release), "PYTHONPATH": str(REPO_ROOT), **(env or {})})
