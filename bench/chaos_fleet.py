"""The chaos run's own fleet: a redis-server it can kill and restart on the same port, a SQLite
registry with one tiny model, two vLLM workers and a gateway, all processes in one directory.

Built on the end-to-end tests' harness (`tests.e2e.fleet_harness`) and their tiny random Code
Llama-layout checkpoint, so it needs the repository checkout, like the tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from fleet_cli.processes import free_port, wait_until
from fleet_common.keys import live_workers
from tests.e2e.fleet_harness import Fleet, new_fleet
from tests.support.redis_server import RedisServer
from tests.support.tiny_checkpoint import tiny_checkpoint_cached

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_CACHE = REPO / ".cache" / "test-checkpoints"
MODEL = "tiny-7b-chaos"
WORKERS = ("chaos-w1", "chaos-w2")
CONTEXT_LIMIT = 2048
WORKER_START_TIMEOUT_S = 400.0


@dataclass(frozen=True)
class FleetTimings:
    """The fleet's failure-detection settings, passed to its processes."""

    liveness_s: float = 3.0
    heartbeat_s: float = 0.5
    drain_grace_s: float = 30.0
    worker_concurrency: int = 16


@dataclass
class ChaosFleet:
    """Owns every process of the run; `stop` ends them all."""

    root: Path
    timings: FleetTimings
    redis_appendonly: bool = False  # keep an append-only file across the restart
    redis: RedisServer | None = None
    fleet: Fleet | None = None
    queue: str = ""
    worker_starts_s: list[float] = field(default_factory=list)
    restarts: int = 0

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "start() first"
        return self.redis.url

    @property
    def harness(self) -> Fleet:
        assert self.fleet is not None, "start() first"
        return self.fleet

    def start(self) -> None:
        data_dir = self.root / "redis-data" if self.redis_appendonly else None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(free_port(), self.root / "logs", data_dir)
        self.redis.start()
        self.fleet = new_fleet(self.root, self.redis_url)
        checkpoint = tiny_checkpoint_cached(CHECKPOINT_CACHE, "infill")
        served = self.fleet.register(MODEL, checkpoint, variant="codellama-7b",
                                     context_limit=CONTEXT_LIMIT)
        self.queue = served.queue
        started = time.monotonic()
        for name in WORKERS:
            self.fleet.spawn_worker(name, MODEL, self._worker_env())
        for name in WORKERS:
            self.fleet.wait_for_worker(name, MODEL, timeout=WORKER_START_TIMEOUT_S)
        self.worker_starts_s.append(time.monotonic() - started)
        self.fleet.start_gateway({"FLEET_WORKER_LIVENESS_S": f"{self.timings.liveness_s:g}"})

    def _worker_env(self) -> dict[str, str]:
        t = self.timings
        return {"FLEET_HEARTBEAT_INTERVAL_S": f"{t.heartbeat_s:g}",
                "FLEET_DRAIN_GRACE_S": f"{t.drain_grace_s:g}",
                "FLEET_CONCURRENCY": str(t.worker_concurrency)}

    def worker_alive(self, name: str) -> bool:
        proc = self.harness.workers.get(name)
        return proc is not None and proc.alive()

    def live_in_redis(self, beat_since: float = 0.0) -> set[str]:
        """Workers whose heartbeat is fresh, and not older than `beat_since` (unix time);
        empty while Redis is down."""
        try:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
            since = max(time.time() - self.timings.liveness_s, beat_since)
            return {w.decode() for w in client.zrangebyscore(live_workers(self.queue), since,
                                                             "+inf")}
        except redis.RedisError:
            return set()

    def sigkill_worker(self, name: str) -> float:
        """SIGKILLs the worker's whole process group (engine core too); returns the unix time."""
        proc = self.harness.workers[name].process
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait(timeout=30)
        return killed_at

    def sigterm_worker(self, name: str) -> float:
        """SIGTERMs the worker's main process only (as Kubernetes does to PID 1)."""
        self.harness.workers[name].process.send_signal(signal.SIGTERM)
        return time.time()

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        """The worker's exit code, or None if it is still running after `timeout_s`."""
        try:
            return self.harness.workers[name].process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def restart_worker(self, name: str) -> float:
        """Ends what is left of the worker, starts it again and waits for its first heartbeat;
        returns how long the restart took (engine load included)."""
        old = self.harness.workers[name]
        old.stop(timeout=5)
        self.restarts += 1
        # The new process writes the same log path; keep the old one's log beside it.
        old.log_path.rename(old.log_path.with_suffix(f".{self.restarts}.log"))
        started = time.monotonic()
        self.harness.spawn_worker(name, MODEL, self._worker_env())
        self.harness.wait_for_worker(name, MODEL, timeout=WORKER_START_TIMEOUT_S)
        took = time.monotonic() - started
        self.worker_starts_s.append(took)
        return took

    def kill_redis(self) -> float:
        """SIGKILLs redis-server (a crash); returns the unix time."""
        assert self.redis is not None
        killed_at = time.time()
        self.redis.kill()
        return killed_at

    def restart_redis(self) -> float:
        """redis-server again on the same port (empty, unless it keeps an append-only file);
        returns the unix time it answered."""
        assert self.redis is not None
        self.redis.start()
        return time.time()

    def wait_all_live(self, timeout_s: float, beat_since: float = 0.0) -> float:
        """Waits until every worker has heartbeat into the live set (since `beat_since`);
        returns the unix time."""
        wait_until(lambda: self.live_in_redis(beat_since) >= set(WORKERS), timeout_s,
                   "both workers in the live set")
        return time.time()

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.redis is not None:
            self.redis.stop()
