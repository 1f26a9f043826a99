"""Starting and stopping the fleet's processes (Redis, workers, gateway) on one machine.

Used by `fleet up` and by the end-to-end tests, so both run the fleet the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port free on 127.0.0.1, chosen below the kernel's ephemeral range: a process that
    binds port 0 (a gateway's gRPC port) or opens a connection is never given a port that was
    handed out here and is not yet bound by the process it was meant for."""
    low, _ = _ephemeral_range()
    first = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = first + int.from_bytes(os.urandom(2), "big") % max(low - first, 1)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found in {first}..{low - 1}")


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra_cleanup: list[Callable[[], None]] = field(default_factory=list)
    started_at_unix: float = field(default_factory=time.time)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process itself and give it `timeout` to exit, then SIGKILL its whole
        process group: what it left behind, or everything if it did not exit in time.

        Only the process gets SIGTERM, as Kubernetes sends it only to a container's first
        process: a worker drains on it and then stops its engine's processes itself, whereas
        signalling the group would stop vLLM's engine core under requests still running."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        for cleanup in self.extra_cleanup:
            cleanup()


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
          ) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )
    log_file.close()
    return ManagedProcess(name, process, log_path)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               process: ManagedProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and not process.alive():
            raise RuntimeError(f"{process.name} exited while waiting for {what}:\n"
                               f"{process.log_tail()}")
        time.sleep(0.2)
    tail = f":\n{process.log_tail()}" if process is not None else ""
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def start_redis(port: int, log_dir: Path) -> ManagedProcess:
    """A throwaway redis-server that keeps nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed and no Redis answers at the URL")
    proc = spawn(f"redis-{port}", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], log_dir)
    wait_until(lambda: redis_answers(f"redis://127.0.0.1:{port}/0"), 15, "redis", proc)
    return proc


def spawn_worker(name: str, env: dict[str, str], log_dir: Path, *, redis_url: str
                 ) -> ManagedProcess:
    """A worker process, not waited for."""
    return spawn(f"worker-{name}", [sys.executable, "-m", "workers"],
                 log_dir, {**env, "FLEET_WORKER_NAME": name, "FLEET_REDIS_URL": redis_url})


def start_worker(name: str, env: dict[str, str], log_dir: Path, *, redis_url: str, queue: str,
                 timeout: float = 300.0) -> ManagedProcess:
    """A worker process; returns once its engine is loaded and its heartbeat is in Redis."""
    proc = spawn_worker(name, env, log_dir, redis_url=redis_url)
    wait_for_heartbeat(proc, redis_url=redis_url, queue=queue, worker=name, timeout=timeout)
    return proc


def wait_for_heartbeat(proc: ManagedProcess, *, redis_url: str, queue: str, worker: str,
                       timeout: float) -> None:
    """Returns once `proc` (worker `worker`) has heartbeated into `queue`'s live set. Only a
    beat newer than the process counts: a killed worker's last beat under the same name stays
    in the set, and would make a restarted one look ready while its engine still loads."""
    from fleet_common.keys import live_workers

    client = redis.Redis.from_url(redis_url)

    def beating() -> bool:
        score = client.zscore(live_workers(queue), worker)
        return score is not None and score >= proc.started_at_unix

    wait_until(beating, timeout, f"worker {worker} to serve {queue}", proc)


def start_gateway(env: dict[str, str], log_dir: Path, port: int = 0, timeout: float = 60.0
                  ) -> tuple[ManagedProcess, int]:
    """A gateway (on a free port when `port` is 0); returns the process and its bound port."""
    instance = f"gateway-{os.getpid()}-{time.monotonic_ns()}"
    port_file = log_dir / f"{instance}.port"
    proc = spawn(instance, [sys.executable, "-m", "gateway", "--port", str(port),
                             "--port-file", str(port_file)], log_dir, env)
    wait_until(port_file.exists, timeout, "gateway port", proc)
    port = int(port_file.read_text())
    proc.extra_cleanup.append(lambda: port_file.unlink(missing_ok=True))
    return proc, port
