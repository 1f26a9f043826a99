"""Usage accounting through real processes: a registry (authenticating, consuming the usage
stream), two gateways, and a real worker process whose engine is the fake seam
(`tests.support.holding_worker`: no vLLM start-up). Requests served show up in `fleet usage` as
requests and tokens within seconds, one request id sent to both gateways counts once, requests
refused at admission show up as refusals; as a table and as JSON. A tenant's own key reads only
its own usage; an operator key reads any."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from codellama.fleet.v1 import generation_pb2 as pb
from codellama.fleet.v1 import inference_service_pb2 as api
from codellama.fleet.v1.inference_service_pb2_grpc import InferenceServiceStub
from fleet_cli.__main__ import main
from fleet_cli.processes import (
    ManagedProcess,
    spawn,
    start_gateway,
    wait_for_heartbeat,
    wait_until,
)
from model_registry.api_keys import INFERENCE, OPERATOR
from model_registry.database import migrate, open_engine
from model_registry.registration import register_model
from model_registry.store import RegistryStore
from model_registry.tenants import TenantStore
from tests.conftest import REPO_ROOT
from tests.e2e.fleet_harness import ENGINE_ENV
from tests.support.holding_worker import RELEASE_FILE

pytestmark = pytest.mark.timeout(180)


@dataclass
class Fleet:
    registry: str
    gateways: list[str]
    keys: dict[str, str]
    release: Path


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str, tiny_checkpoints: dict[str, Path]) -> Iterator[Fleet]:
    """Model "m" with a worker, model "idle" without one."""
    database = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(database)
    migrate(engine)
    store = RegistryStore(engine)
    store.ensure_default_pools()
    served = {name: register_model(store, model=name, version="v1",
                                   checkpoint_dir=tiny_checkpoints["infill"],
                                   variant="codellama-7b-instruct", context_limit=2048,
                                   dtype="float32") for name in ("m", "idle")}
    tenants = TenantStore(store)
    keys = {}
    for tenant, scope in (("ops", OPERATOR), ("acme", INFERENCE), ("globex", INFERENCE)):
        tenants.create_tenant(tenant)
        keys[tenant] = tenants.create_key(tenant, "app", [scope])[1]
    engine.dispose()
    port_file, release, logs = tmp_path / "registry.port", tmp_path / "release", tmp_path / "logs"
    processes: list[ManagedProcess] = [
        spawn("registry", [sys.executable, "-m", "model_registry", "--port", "0", "--port-file",
                           str(port_file)], logs,
              {"FLEET_REGISTRY_URL": database, "FLEET_REDIS_URL": redis_url,
               "FLEET_USAGE_ACCOUNTING": "true"}),
        spawn("worker-holding", [sys.executable, "-m", "tests.support.holding_worker"], logs,
              {**ENGINE_ENV, "FLEET_REGISTRY_URL": database, "FLEET_MODEL": "m",
               "FLEET_WORKER_NAME": "holding", "FLEET_REDIS_URL": redis_url,
               RELEASE_FILE: str(release), "PYTHONPATH": str(REPO_ROOT)})]
    env = {"FLEET_REGISTRY_URL": database, "FLEET_REDIS_URL": redis_url,
           "FLEET_USAGE_ACCOUNTING": "true", "FLEET_USAGE_FLUSH_S": "0.2",
           "FLEET_REGISTRY_REFRESH_S": "0.5"}
    try:
        with ThreadPoolExecutor(2) as pool:  # both gateways start while the worker does
            started = list(pool.map(lambda _: start_gateway(env, logs), range(2)))
        processes += [process for process, _ in started]
        wait_until(port_file.exists, 60, "registry port", processes[0])
        wait_for_heartbeat(processes[1], redis_url=redis_url, queue=served["m"].queue,
                           worker="holding", timeout=120)
        yield Fleet(f"127.0.0.1:{port_file.read_text()}",
                    [f"127.0.0.1:{port}" for _, port in started], keys, release)
    finally:
        for process in reversed(processes):
            process.stop()


def _complete(target: str, key: str, model: str = "m", request_id: str = ""
              ) -> api.CompleteResponse | grpc.RpcError:
    with grpc.insecure_channel(target) as channel:
        try:
            return InferenceServiceStub(channel).Complete(
                api.CompleteRequest(model=model, prompt="def f():",
                                    sampling=pb.SamplingParams(max_tokens=4),
                                    options=pb.RequestOptions(request_id=request_id)),
                timeout=30, metadata=[("authorization", f"Bearer {key}")])
        except grpc.RpcError as err:
            return err


def test_usage_as_a_table_and_as_json(fleet: Fleet,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    keys, (one, other) = fleet.keys, fleet.gateways
    today = datetime.now(UTC).date()
    since = (today - timedelta(days=1)).isoformat()

    # One request id sent to both gateways while its generation is held, and another request.
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(_complete, target, keys["acme"], request_id=request_id)
                 for target, request_id in ((one, "shared"), (other, "shared"), (one, "solo"))]
        time.sleep(1.0)  # all three admitted and waiting on the engine
        fleet.release.touch()
        answers = [call.result() for call in calls]
    assert all(isinstance(a, api.CompleteResponse) for a in answers), answers
    shared, again, solo = answers
    assert shared.choices[0].text == again.choices[0].text  # one generation
    for _ in range(2):  # no worker serves "idle": refused at admission
        refused = _complete(other, keys["acme"], model="idle")
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
    prompt = shared.usage.prompt_tokens + solo.usage.prompt_tokens
    completion = shared.usage.completion_tokens + solo.usage.completion_tokens

    def usage(*argv: str, key: str | None = None) -> tuple[int, str, str]:
        code = main(["usage", "--registry", fleet.registry,
                     *(["--api-key", key] if key else []), "--since", since, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def stored() -> bool:
        code, out, _ = usage("--json", key=keys["acme"])
        totals = json.loads(out)["totals"] if code == 0 else {}
        return totals.get("requests") == 2 and totals.get("refusals") == {"Unavailable": 2}

    wait_until(stored, 30, "the usage to reach the registry")
    time.sleep(1.0)  # a third request (the shared id counted twice) would be stored by now
    code, out, err = usage("--json", "--until", today.isoformat(), key=keys["acme"])
    assert code == 0, err
    day = today.isoformat()
    assert json.loads(out) == {
        "tenant": "acme", "since": since, "until": day,
        "records": [
            {"day": day, "tenant": "acme", "model": "idle", "model_version": "v1",
             "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "refusals": {"Unavailable": 2}},
            {"day": day, "tenant": "acme", "model": "m", "model_version": "v1", "requests": 2,
             "prompt_tokens": prompt, "completion_tokens": completion, "refusals": {}},
        ],
        "totals": {"requests": 2, "prompt_tokens": prompt, "completion_tokens": completion,
                   "refusals": {"Unavailable": 2}},
    }

    code, out, err = usage("--tenant", "acme", key=keys["ops"])
    assert code == 0, err
    p, c = str(prompt), str(completion)
    assert out.splitlines() == [
        f"usage of tenant acme, {since} to {day} (UTC days)",
        "day         model  version  requests  prompt tok  completion tok  refusals",
        f"{day}  idle   v1              0           0               0  Unavailable 2",
        f"{day}  m      v1              2  {p:>10}  {c:>14}  -",
        f"total                              2  {p:>10}  {c:>14}  Unavailable 2",
    ]

    code, out, err = usage(key=keys["ops"])  # an operator without --tenant: every tenant
    assert code == 0, err
    assert out.splitlines()[0] == f"usage of every tenant, {since} to {day} (UTC days)"
    assert out.splitlines()[1].split()[:3] == ["day", "tenant", "model"]

    code, out, err = usage("--json", key=keys["globex"])  # its own: nothing yet
    assert code == 0 and json.loads(out)["records"] == [], err
    code, _, err = usage("--tenant", "acme", key=keys["globex"])
    assert code == 1 and err.startswith(
        "error: PERMISSION_DENIED: UsageService.GetUsage: API key "), err
    assert "may read only tenant 'globex'" in err
    code, _, err = usage()
    assert code == 1 and err.startswith("error: UNAUTHENTICATED: UsageService.GetUsage needs "
                                        "an API key"), err
    code, _, err = usage("--until", "2000-01-01", key=keys["ops"])
    assert code == 1 and err.startswith("error: INVALID_ARGUMENT: until: must not be before "
                                        f"since ({since})"), err
