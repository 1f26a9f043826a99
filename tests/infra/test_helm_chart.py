"""The Helm chart (infra/helm/codellama-fleet) renders with the real `helm template`, every object
it renders validates against Kubernetes' schemas (kubernetes-validate, strict, pinned version),
and what it renders agrees with the code: queue names, settings, ports, secrets, drain grace."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_common.keys import queue_name
from fleet_common.settings.base import setting_fields
from gateway.settings import GatewaySettings
from model_registry.__main__ import RegistrySettings
from model_registry.reader import is_grpc_url
from model_registry.store import DEFAULT_POOLS
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
VALUES = ROOT / "infra" / "helm" / "codellama-fleet" / "values.yaml"


def load_chart_tools():
    """infra/helm/validate.py (not a package: loaded by path, once)."""
    name = "codellama_fleet_chart_validate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "infra" / "helm" / "validate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


chart = load_chart_tools()


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return chart.ensure_helm()
    except RuntimeError as exc:  # no Helm and no way to fetch it: nothing was validated
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def docs(helm: Path) -> list[dict]:
    return chart.render(helm=helm)


def default_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pods(docs: list[dict]) -> dict[str, dict]:
    return {name: d["spec"]["template"]["spec"] for name, d in by_kind(docs, "Deployment").items()}


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def workers(docs: list[dict]) -> dict[str, dict]:
    return {n: d for n, d in by_kind(docs, "Deployment").items() if component(d) == "worker"}


def env_names(cls) -> set[str]:
    return {field.env_name for field in setting_fields(cls)}


# --- rendering and schemas -----------------------------------------------------------------------

def test_helm_is_the_pinned_release(helm: Path) -> None:
    out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(f"v{chart.HELM_VERSION}+")


def test_helm_lint_is_clean(helm: Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(chart.CHART)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rendered_object_validates_against_kubernetes_and_keda(docs: list[dict]) -> None:
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service", "ScaledObject"}
    assert chart.errors_of(docs) == []
    assert all(d["metadata"]["namespace"] == chart.NAMESPACE for d in docs)


@pytest.mark.parametrize("variant", ["scale-to-zero", "secrets-and-redis-secret",
                                     "no-autoscaling", "one-worker-extra-env"])
def test_every_variant_of_the_values_validates(helm: Path, variant: str) -> None:
    values: dict[str, Any] = {}
    if variant == "scale-to-zero":
        values = {"workers": [dict(w, minReplicas=0) for w in default_values()["workers"]]}
    elif variant == "secrets-and-redis-secret":
        values = {"secrets": {"create": True}, "redis": {"urlSecret": "fleet-redis-url"}}
    elif variant == "no-autoscaling":
        values = {"autoscaling": {"enabled": False}}
    elif variant == "one-worker-extra-env":
        values = {"workers": [{"model": "codellama-13b-python", "version": "2024.1", "pool": "7b",
                               "gpusPerWorker": 1, "capacity": 24, "minReplicas": 0,
                               "maxReplicas": 3, "drainGraceS": 120,
                               "env": {"FLEET_KV_CACHE_GIB": 40}}],
                  "workerDefaults": {"env": {"FLEET_MAX_NUM_SEQS": 64}}}
    docs = chart.render(values, helm=helm)
    assert chart.errors_of(docs) == []
    if variant == "scale-to-zero":
        assert all(s["spec"]["minReplicaCount"] == 0 for s in by_kind(docs, "ScaledObject").values())
    if variant == "no-autoscaling":
        assert not by_kind(docs, "ScaledObject")
        assert all(d["spec"]["replicas"] >= 1 for d in workers(docs).values())
    if variant == "one-worker-extra-env":
        (pod,) = [d["spec"]["template"]["spec"] for d in workers(docs).values()]
        env = env_of(pod["containers"][0])
        assert env["FLEET_KV_CACHE_GIB"] == "40" and env["FLEET_MAX_NUM_SEQS"] == "64"
        assert pod["terminationGracePeriodSeconds"] == 120 + 60
        assert env_names(WorkerSettings) >= {n for n in env if n.startswith("FLEET_")}


def test_a_kubernetes_object_with_a_misspelt_field_fails_validation(docs: list[dict]) -> None:
    gateway = copy.deepcopy(by_kind(docs, "Deployment")["fleet-gateway"])
    gateway["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    (error,) = chart.errors_of([gateway])
    assert "imagePullPolcy" in error
    worker = copy.deepcopy(next(iter(workers(docs).values())))
    worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "360s"
    assert chart.errors_of([worker])


@pytest.mark.parametrize("values, message", [
    ({"workers": [{"model": "m", "version": "v1", "pool": "7b", "gpusPerWorker": 3,
                   "capacity": 8, "minReplicas": 0, "maxReplicas": 2}]}, "gpusPerWorker"),
    ({"workers": [{"model": "m", "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplica": 0, "maxReplicas": 2}]}, "minReplica"),
    ({"workers": [{"model": "m", "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplicas": 3, "maxReplicas": 2}]}, "exceeds maxReplicas"),
    ({"workers": [{"model": "m_x", "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplicas": 0, "maxReplicas": 2}]}, "model"),
    ({"workers": [{"model": "m" * 50, "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplicas": 0, "maxReplicas": 2}]}, "longer than 63"),
    ({"workers": [{"model": "m", "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplicas": 0, "maxReplicas": 2}] * 2}, "listed twice"),
    ({"workers": [{"model": "m", "version": "v1", "pool": "7b", "gpusPerWorker": 1,
                   "capacity": 8, "minReplicas": 0, "maxReplicas": 2,
                   "env": {"FLEET_CAPACITY": 9}}]}, "set by the chart"),
    ({"settings": {"visibilityTimeoutS": 1800, "maxDeadlineS": 1800}}, "visibilityTimeoutS"),
    ({"autoscaling": {"scaleDown": {"stabilizationWindowS": 7200, "podsPerPeriod": 1,
                                    "periodS": 120}}}, "stabilizationWindowS"),
])
def test_helm_refuses_bad_values(helm: Path, values: dict, message: str) -> None:
    with pytest.raises(chart.RenderError, match=message):
        chart.render(values, helm=helm)


# --- what infra/k8s guaranteed, carried over ----------------------------------------------------

def test_each_worker_serves_and_is_scaled_on_its_own_queue(docs: list[dict]) -> None:
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in by_kind(docs, "ScaledObject").values()}
    assert workers(docs) and set(workers(docs)) == set(scaled)
    for name, deployment in workers(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert (env["FLEET_MODEL"], env["FLEET_MODEL_VERSION"]) == (labels["model"],
                                                                   labels["version"])
        queue = queue_name(labels["pool"], labels["model"], labels["version"])
        (trigger,) = scaled[name]["spec"]["triggers"]
        assert trigger["metadata"]["query"] == f'max(fleet_desired_workers{{queue="{queue}"}})'
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["codellama-fleet/queue"] == queue


def test_every_worker_entry_of_the_values_gets_its_deployment(docs: list[dict]) -> None:
    entries = default_values()["workers"]
    assert len(workers(docs)) == len(entries)
    rendered = {(d["spec"]["template"]["metadata"]["labels"]["pool"],
                 d["spec"]["template"]["metadata"]["labels"]["model"],
                 d["spec"]["template"]["metadata"]["labels"]["version"]): d
                for d in workers(docs).values()}
    for entry in entries:
        deployment = rendered[(entry["pool"], entry["model"], entry["version"])]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == entry["gpusPerWorker"]
        assert env_of(container)["FLEET_CAPACITY"] == str(entry["capacity"])
        scaled = by_kind(docs, "ScaledObject")[deployment["metadata"]["name"]]["spec"]
        assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (
            entry["minReplicas"], entry["maxReplicas"])
        assert "replicas" not in deployment["spec"]  # the HPA KEDA makes owns the count


def test_gpus_per_worker_is_the_tensor_parallel_size_of_the_registrys_pool() -> None:
    """The engine runs tensor parallel over the registry's size for the version (its pool's):
    the chart's default entries ask for that many GPUs."""
    pool_tp = {name: tp for name, tp, _ in DEFAULT_POOLS}
    for entry in default_values()["workers"]:
        assert entry["gpusPerWorker"] == pool_tp[entry["pool"]], entry


def test_every_fleet_variable_is_a_setting_of_the_role_that_gets_it(helm: Path) -> None:
    docs = chart.render({"secrets": {"create": True}}, helm=helm)
    roles = {"gateway": env_names(GatewaySettings), "worker": env_names(WorkerSettings),
             "registry": env_names(RegistrySettings)}
    for name, deployment in by_kind(docs, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            fleet = {n for n in env_of(container) if n.startswith("FLEET_")}
            assert fleet and fleet <= roles[component(deployment)], (name, fleet
                                                                     - roles[component(deployment)])
    # Every role reads the ConfigMap: a name in it is some role's setting (the start-up check,
    # fleet_common.settings.environment, lets a role see another role's).
    config = by_kind(docs, "ConfigMap")["fleet-config"]["data"]
    assert config and set(config) <= set.union(*roles.values())
    secrets = {k for s in by_kind(docs, "Secret").values() for k in s["stringData"]}
    assert secrets <= set.union(*roles.values())


def _secrets_referenced(pod: dict) -> set[str]:
    """Secrets a pod can read: envFrom, env valueFrom and volumes."""
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", [])
                  if "secretRef" in s}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def test_only_the_registry_pod_can_read_the_database_secret(helm: Path) -> None:
    docs = chart.render({"secrets": {"create": True}}, helm=helm)
    database_secrets = {name for name, s in by_kind(docs, "Secret").items()
                        if "://" in s["stringData"].get("FLEET_REGISTRY_URL", "")
                        and not is_grpc_url(s["stringData"]["FLEET_REGISTRY_URL"])}
    assert database_secrets == {default_values()["secrets"]["registryDatabase"]}
    readers = {name for name, pod in pods(docs).items()
               if _secrets_referenced(pod) & database_secrets}
    assert readers == {"fleet-registry"}
    assert "FLEET_REGISTRY_URL" not in by_kind(docs, "ConfigMap")["fleet-config"]["data"]


def test_only_gateways_read_the_jobs_database_secret_and_only_when_named(helm: Path) -> None:
    assert not any("FLEET_JOBS_DATABASE_URL" in s["stringData"] for s in by_kind(
        chart.render({"secrets": {"create": True}}, helm=helm), "Secret").values())
    docs = chart.render({"secrets": {"create": True, "jobsDatabase": "fleet-jobs-db"}},
                        helm=helm)
    assert "FLEET_JOBS_DATABASE_URL" in by_kind(docs, "Secret")["fleet-jobs-db"]["stringData"]
    readers = {name for name, pod in pods(docs).items()
               if "fleet-jobs-db" in _secrets_referenced(pod)}
    assert readers == {"fleet-gateway"}, readers


def test_gateways_and_workers_read_the_registry_through_its_service(docs: list[dict]) -> None:
    service = by_kind(docs, "Service")["fleet-registry"]
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")["port"]
    expected = f"grpc://{service['metadata']['name']}:{grpc_port}"
    command = pods(docs)["fleet-registry"]["containers"][0]["command"]
    assert command[command.index("--port") + 1] == str(grpc_port)
    others = {name: pod for name, pod in pods(docs).items() if name != "fleet-registry"}
    assert "fleet-gateway" in others and any(n.startswith("fleet-worker-") for n in others)
    for name, pod in others.items():
        for container in pod["containers"]:
            assert env_of(container).get("FLEET_REGISTRY_URL") == expected, name
            assert is_grpc_url(expected)


def test_everyone_reaches_redis_through_the_referenced_url(docs: list[dict], helm: Path) -> None:
    """The default URL is infra/k8s/redis.yaml's Service; a Secret can hold it instead."""
    redis = [d for d in yaml.safe_load_all((ROOT / "infra" / "k8s" / "redis.yaml").read_text())
             if d and d["kind"] == "Service"]
    (service,) = redis
    config = by_kind(docs, "ConfigMap")["fleet-config"]["data"]
    assert config["FLEET_REDIS_URL"] == (
        f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0")
    for pod in pods(docs).values():
        refs = pod["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "fleet-config"}} in refs
    with_secret = chart.render({"redis": {"urlSecret": "fleet-redis-url"}}, helm=helm)
    assert "FLEET_REDIS_URL" not in by_kind(with_secret, "ConfigMap")["fleet-config"]["data"]
    for pod in pods(with_secret).values():
        assert "fleet-redis-url" in _secrets_referenced(pod)


def test_the_visibility_timeout_outlasts_the_longest_deadline(docs: list[dict]) -> None:
    assert WorkerSettings().visibility_timeout_s > GatewaySettings().max_deadline_s
    data = by_kind(docs, "ConfigMap")["fleet-config"]["data"]
    assert float(data["FLEET_VISIBILITY_TIMEOUT_S"]) > float(data["FLEET_MAX_DEADLINE_S"])


def test_workers_get_their_drain_grace_and_the_engine_shutdown_before_sigkill(
        docs: list[dict]) -> None:
    from workers.runtime import STOP_MARGIN_S

    assert workers(docs)
    for name, deployment in workers(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        grace = float(env_of(pod["containers"][0])["FLEET_DRAIN_GRACE_S"])
        assert pod["terminationGracePeriodSeconds"] > grace + STOP_MARGIN_S, name
        # No preStop hook: SIGTERM itself starts the drain.
        assert "lifecycle" not in pod["containers"][0]


# --- metrics ports ----------------------------------------------------------------------------

def test_every_process_serves_metrics_on_its_contract_port_and_is_scraped_there(
        docs: list[dict]) -> None:
    expected = {"gateway": 9100, "worker": 9101, "registry": 9102}
    for name, deployment in by_kind(docs, "Deployment").items():
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        port = expected[component(deployment)]
        assert env_of(container)["FLEET_METRICS_PORT"] == str(port), name
        assert {"name": "metrics", "containerPort": port} in container["ports"], name
        annotations = template["metadata"]["annotations"]
        assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"],
                annotations["prometheus.io/path"]) == ("true", str(port), "/metrics"), name


def test_the_gateways_assume_the_smallest_worker_capacity_for_a_queue_without_workers(
        docs: list[dict]) -> None:
    gateway = pods(docs)["fleet-gateway"]["containers"][0]
    smallest = min(w["capacity"] for w in default_values()["workers"])
    assert env_of(gateway)["FLEET_AUTOSCALE_DEFAULT_CAPACITY"] == str(smallest)


def test_pod_templates_do_not_carry_the_chart_version(docs: list[dict]) -> None:
    """A chart upgrade that changes nothing in a pod must not restart (drain) every worker."""
    for deployment in by_kind(docs, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels
