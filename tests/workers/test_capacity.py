"""A worker publishes its capacity in its status hash, which the gateways' admission control
sums per queue: FLEET_CAPACITY when set, else the Celery concurrency or the engine's
max_num_seqs, whichever is smaller, less the fair-share reserve."""

from __future__ import annotations

import pytest

from model_registry.records import ServedModel
from tests.support.fake_engine import FakeEngine
from workers.generation import InFlight
from workers.runtime import WorkerRuntime
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(60)

SERVED = ServedModel(model="tiny", version="v1", pool="7b", checkpoint="ck", checkpoint_dir="/x",
                     template="t@1", chat_format="", chat_template="", supports_infill=False,
                     context_limit=2048, tensor_parallel_size=1, dtype="float32")


@pytest.mark.parametrize(("options", "capacity"), [
    ({"concurrency": 16}, 16),
    ({"concurrency": 16, "max_num_seqs": 8}, 8),
    ({"concurrency": 4, "max_num_seqs": 8}, 4),
    ({"concurrency": 16, "max_num_seqs": 8, "capacity": 12}, 12),
    ({"concurrency": 5, "max_num_seqs": 5, "fair_share_reserve": 1}, 4),
])
def test_the_status_carries_the_capacity(options: dict[str, int], capacity: int) -> None:
    settings = WorkerSettings(worker_name="w1", **options)  # type: ignore[arg-type]
    runtime = WorkerRuntime(settings, SERVED, FakeEngine)
    # What the heartbeat writes into the status hash (tested in test_heartbeat), without
    # starting the engine loop.
    runtime._engine = FakeEngine()
    try:
        status = runtime._status(InFlight())
    finally:
        runtime._loop.close()
    assert status["capacity"] == capacity


def test_a_reserve_must_leave_an_open_slot() -> None:
    with pytest.raises(ValueError, match="FLEET_FAIR_SHARE_RESERVE"):
        WorkerSettings(worker_name="w1", concurrency=2, fair_share_reserve=2)
