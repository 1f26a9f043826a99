"""The autoscaling signal of a real gateway under a scripted load: it rises with queued +
in-flight work, stays up while requests run with nothing queued, and returns to zero when idle.

The worker is the real worker process with the fake engine holding each request until the test
releases it (`tests.support.holding_worker`), so each stage of the load lasts as long as the
test looks at it."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.processes import (
    ManagedProcess,
    free_port,
    start_gateway,
    wait_for_heartbeat,
    wait_until,
)
from tests.support.holding_fleet import registry_with_model, spawn_holding_worker

pytestmark = pytest.mark.timeout(180)
MODEL = "tiny-autoscale"
KEY = (("authorization", "Bearer key-a"),)


@dataclass
class Fleet:
    target: str
    metrics: str
    queue: str
    release: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str,
          tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("autoscale")
    registry_url, served = registry_with_model(tmp, MODEL, tiny_checkpoints["infill"])
    release, logs, metrics_port = tmp / "release", tmp / "logs", free_port()
    worker = spawn_holding_worker("holding-autoscale", registry_url=registry_url, model=MODEL,
                                  redis_url=redis_url, release=release, log_dir=logs,
                                  env={"FLEET_CONCURRENCY": "2", "FLEET_CAPACITY": "2"})
    processes: list[ManagedProcess] = [worker]
    try:
        gateway, port = start_gateway({
            "FLEET_REGISTRY_URL": registry_url, "FLEET_REDIS_URL": redis_url,
            "FLEET_API_KEYS": json.dumps({"key-a": "tenant-a"}),
            "FLEET_WORKER_LIVENESS_S": "3", "FLEET_REGISTRY_REFRESH_S": "0.5",
            "FLEET_METRICS_PORT": str(metrics_port), "FLEET_METRICS_HOST": "127.0.0.1",
            "FLEET_AUTOSCALE_INTERVAL_S": "0.1"}, logs)
        processes.append(gateway)
        wait_for_heartbeat(worker, redis_url=redis_url, queue=served.queue,
                           worker="holding-autoscale", timeout=120)
        yield Fleet(f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics",
                    served.queue, release)
    finally:
        for process in reversed(processes):
            process.stop()


def _signal(fleet: Fleet) -> tuple[float, float, float]:
    """(desired workers, queued, in flight) of the fleet's queue, as the gateway exports them."""
    with urllib.request.urlopen(fleet.metrics, timeout=10) as response:
        text = response.read().decode()
    values = {"fleet_desired_workers": 0.0, "fleet_queue_depth": 0.0,
              "fleet_queue_in_flight": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values and sample.labels.get("queue") == fleet.queue:
                values[sample.name] += sample.value
    return (values["fleet_desired_workers"], values["fleet_queue_depth"],
            values["fleet_queue_in_flight"])


def _until(fleet: Fleet, expected: tuple[float, float, float], what: str) -> None:
    seen: list[tuple[float, float, float]] = []

    def reached() -> bool:
        seen.append(_signal(fleet))
        return seen[-1] == expected
    try:
        wait_until(reached, 20, what)
    except Exception as exc:
        raise AssertionError(f"{what}: wanted {expected}, saw {seen[-5:]}") from exc


def test_the_signal_follows_queued_and_in_flight_work_and_returns_to_zero(fleet: Fleet) -> None:
    stub = InferenceServiceStub(grpc.insecure_channel(fleet.target))
    errors: list[BaseException] = []

    def call(priority: int) -> None:
        try:
            stub.Complete(api.CompleteRequest(
                model=MODEL, prompt="def f():", options=pb.RequestOptions(priority=priority),
                sampling=pb.SamplingParams(max_tokens=2)), metadata=KEY, timeout=60)
        except grpc.RpcError as exc:
            errors.append(exc)

    # Four NORMAL requests and two LOW ones (taken last) on a worker that runs two at once.
    callers = [threading.Thread(target=call, args=(priority,))
               for priority in [pb.PRIORITY_NORMAL] * 4 + [pb.PRIORITY_LOW] * 2]
    for caller in callers:
        caller.start()
    # 4 queued + 2 in flight over a capacity of 2 per worker.
    _until(fleet, (3.0, 4.0, 2.0), "all six held")
    fleet.release.write_text("4")  # the four NORMAL ones finish; the LOW ones start, and hold
    _until(fleet, (1.0, 0.0, 2.0), "nothing queued, two still running")
    fleet.release.write_text("")  # everything finishes
    _until(fleet, (0.0, 0.0, 0.0), "idle")
    for caller in callers:
        caller.join(timeout=30)
    assert not errors, errors
