"""Fixtures shared by every test folder: a throwaway Redis and the tiny test checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import throwaway_redis

# Gateways and registries the tests start record and consume usage only where a test asks:
# a registry started without its own FLEET_REDIS_URL would otherwise consume (and delete) the
# usage stream of whatever Redis answers on the default URL.
os.environ.setdefault("FLEET_USAGE_ACCOUNTING", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_CACHE = REPO_ROOT / ".cache" / "test-checkpoints"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh Redis per test module: no module sees another's keys, clients or load."""
    with throwaway_redis(tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, Path]:
    """Code Llama-layout checkpoints with random weights, built once and cached on disk."""
    from tests.support.tiny_checkpoint import tiny_checkpoint_cached

    checkpoints = {layout: tiny_checkpoint_cached(CHECKPOINT_CACHE, layout)
                   for layout in ("infill", "70b", "plain")}
    checkpoints["infill-seed1"] = tiny_checkpoint_cached(CHECKPOINT_CACHE, "infill", seed=1)
    return checkpoints
