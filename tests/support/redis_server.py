"""Throwaway redis-server processes for tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fleet_cli.processes import free_port, start_redis


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
