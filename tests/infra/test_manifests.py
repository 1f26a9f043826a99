"""The Kubernetes manifests agree with the code: queue names, settings, ports."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleet_common.keys import queue_name
from gateway.settings import GatewaySettings
from model_registry.__main__ import RegistrySettings
from workers.settings import WorkerSettings

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def _documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_every_manifest_parses_and_names_a_kind() -> None:
    docs = _documents()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "ConfigMap", "ScaledObject"}
    assert all(d["metadata"]["namespace"] == "codellama-fleet" for d in docs)


def test_each_worker_is_scaled_on_its_own_queue() -> None:
    docs = _documents()
    workers = {d["metadata"]["name"]: d for d in docs
               if d["kind"] == "Deployment"
               and d["metadata"].get("labels", {}).get("app") == "fleet-worker"}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    assert workers and set(workers) == set(scaled)
    for name, deployment in workers.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        env = {e["name"]: e.get("value") for e in
               deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert (env["FLEET_MODEL"], env["FLEET_MODEL_VERSION"]) == (labels["model"],
                                                                   labels["version"])
        expected = queue_name(labels["pool"], labels["model"], labels["version"])
        assert scaled[name]["spec"]["triggers"][0]["metadata"]["listName"] == expected


def test_every_fleet_variable_is_a_real_setting() -> None:
    known = {f"FLEET_{name.upper()}" for settings in (GatewaySettings, WorkerSettings,
                                                      RegistrySettings)
             for name in settings.model_fields}
    docs = _documents()
    names: set[str] = set()
    for d in docs:
        if d["kind"] in ("ConfigMap", "Secret"):
            names |= set(d.get("data", {})) | set(d.get("stringData", {}))
        if d["kind"] == "Deployment":
            for container in d["spec"]["template"]["spec"]["containers"]:
                names |= _env_names(container)
    fleet_names = {n for n in names if n.startswith("FLEET_")}
    assert fleet_names and fleet_names <= known, fleet_names - known
