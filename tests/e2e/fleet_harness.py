"""A real fleet for the end-to-end tests: registry, vLLM workers, gateway, all as processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import (
    ManagedProcess,
    spawn,
    start_gateway,
    start_worker,
    wait_for_heartbeat,
)
from model_registry.database import migrate, open_engine
from model_registry.registration import register_model
from model_registry.store import RegistryStore, ServedModel

ENGINE_ENV = {"FLEET_ENFORCE_EAGER": "true", "FLEET_KV_CACHE_GIB": "1",
              "FLEET_LOG_LEVEL": "INFO", "FLEET_HEARTBEAT_INTERVAL_S": "0.5"}


@dataclass
class Fleet:
    registry_url: str
    redis_url: str
    log_dir: Path
    store: RegistryStore
    target: str = ""
    gateway: ManagedProcess | None = None
    workers: dict[str, ManagedProcess] = field(default_factory=dict)

    def stub(self) -> InferenceServiceStub:
        return InferenceServiceStub(grpc.insecure_channel(self.target))

    def aio_stub(self) -> InferenceServiceStub:
        return InferenceServiceStub(grpc.aio.insecure_channel(self.target))

    def register(self, model: str, checkpoint: Path, version: str = "v1",
                 **kwargs: object) -> ServedModel:
        return register_model(self.store, model=model, version=version,
                              checkpoint_dir=checkpoint, dtype="float32", **kwargs)

    def worker_env(self, model: str, extra: dict[str, str] | None = None,
                   version: str | None = None) -> dict[str, str]:
        pinned = {"FLEET_MODEL_VERSION": version} if version else {}
        return {**ENGINE_ENV, "FLEET_REGISTRY_URL": self.registry_url, "FLEET_MODEL": model,
                **pinned, **(extra or {})}

    def spawn_worker(self, name: str, model: str, extra_env: dict[str, str] | None = None,
                     version: str | None = None) -> ManagedProcess:
        """Starts a worker without waiting for it (start several, then wait_for_worker)."""
        env = {**self.worker_env(model, extra_env, version), "FLEET_WORKER_NAME": name,
               "FLEET_REDIS_URL": self.redis_url}
        proc = spawn(f"worker-{name}", [__import__("sys").executable, "-m", "workers"],
                     self.log_dir, env)
        self.workers[name] = proc
        return proc

    def wait_for_worker(self, name: str, model: str, version: str | None = None,
                        timeout: float = 400.0) -> None:
        wait_for_heartbeat(self.workers[name], redis_url=self.redis_url,
                           queue=self.store.get_version(model, version).queue, worker=name,
                           timeout=timeout)

    def start_worker(self, name: str, model: str, extra_env: dict[str, str] | None = None
                     ) -> ManagedProcess:
        env = self.worker_env(model, extra_env)
        proc = start_worker(name, env, self.log_dir, redis_url=self.redis_url,
                            queue=self.store.get_version(model).queue)
        self.workers[name] = proc
        return proc

    def start_gateway(self, extra_env: dict[str, str] | None = None) -> None:
        env = {"FLEET_REGISTRY_URL": self.registry_url, "FLEET_REDIS_URL": self.redis_url,
               "FLEET_WORKER_LIVENESS_S": "3", "FLEET_REGISTRY_REFRESH_S": "0.5",
               **(extra_env or {})}
        self.gateway, port = start_gateway(env, self.log_dir)
        self.target = f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        for proc in self.workers.values():
            proc.stop()


def new_fleet(tmp: Path, redis_url: str) -> Fleet:
    registry_url = f"sqlite:///{tmp / 'registry.db'}"
    engine = open_engine(registry_url)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    return Fleet(registry_url=registry_url, redis_url=redis_url, log_dir=tmp / "logs",
                 store=store)
