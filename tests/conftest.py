"""Fixtures shared by every test folder: a throwaway Redis and the tiny test checkpoints."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_cli.processes import free_port, start_redis

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_CACHE = REPO_ROOT / ".cache" / "test-checkpoints"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a free port, so runs never collide."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("FLEET_TEST_REDIS_URL")
        if not url:
            pytest.skip("redis-server is not installed and FLEET_TEST_REDIS_URL is not set")
        yield url
        return
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis-logs"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, Path]:
    """Code Llama-layout checkpoints with random weights, built once and cached on disk."""
    from tests.support.tiny_checkpoint import tiny_checkpoint_cached

    checkpoints = {layout: tiny_checkpoint_cached(CHECKPOINT_CACHE, layout)
                   for layout in ("infill", "70b", "plain")}
    checkpoints["infill-seed1"] = tiny_checkpoint_cached(CHECKPOINT_CACHE, "infill", seed=1)
    return checkpoints
