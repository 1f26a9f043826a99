"""Throwaway redis-server processes for tests: `throwaway_redis` (a URL), and `redis_server`
(a `RedisServer` to kill and restart on its port, optionally with an append-only file)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_cli.processes import (
    ManagedProcess,
    free_port,
    redis_answers,
    spawn,
    start_redis,
    wait_until,
)


@contextmanager
def throwaway_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free port, so runs never collide."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("FLEET_TEST_REDIS_URL")
        if not url:
            pytest.fail("redis-server is not installed and FLEET_TEST_REDIS_URL is not set")
        yield url
        return
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis-logs"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


@dataclass
class RedisServer:
    """A redis-server a test may kill and start again on the same port; with `data_dir` it
    keeps an append-only file there (what production runs: infra/redis/redis.conf), so a
    restart finds what was written before it."""

    port: int
    log_dir: Path
    data_dir: Path | None = None
    config: Path | None = None  # a redis.conf to start from; the port and dir still ours
    process: ManagedProcess | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        args = [binary] + ([str(self.config)] if self.config else [])
        args += ["--port", str(self.port), "--bind", "127.0.0.1"]
        if self.data_dir is None:
            args += ["--save", "", "--appendonly", "no"]
        else:
            args += ["--dir", str(self.data_dir), "--appendonly", "yes"]
            if self.config is None:
                args += ["--save", "", "--appendfsync", "everysec"]
        self.starts += 1
        self.process = spawn(f"redis-{self.port}-{self.starts}", args, self.log_dir)
        wait_until(lambda: redis_answers(self.url), timeout_s, "redis", self.process)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no final write of the append-only file."""
        if self.process is not None and self.process.alive():
            self.process.process.kill()
            self.process.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM: Redis writes out its append-only file and exits."""
        if self.process is not None:
            self.process.stop()

    def restart(self, *, crash: bool = False) -> None:
        """Stops the server (SIGKILL when `crash`, else SIGTERM) and starts it again on the
        same port, with the same data directory."""
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()


@contextmanager
def redis_server(tmp_path_factory: pytest.TempPathFactory, *, appendonly: bool = False,
                 config: Path | None = None) -> Iterator[RedisServer]:
    """A `RedisServer` of our own on a free port, stopped at the end."""
    data_dir = tmp_path_factory.mktemp("redis-data") if appendonly else None
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis-logs"), data_dir, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()
