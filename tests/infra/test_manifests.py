"""infra/k8s/redis.yaml, the Redis the Helm chart's default URL points at, runs the shipped
config with its data on a persistent volume. (The fleet's own objects are the chart's:
tests/infra/test_helm_chart.py.)"""

from __future__ import annotations

from pathlib import Path

import yaml

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def _documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_redis_runs_the_shipped_config_with_its_data_on_a_persistent_volume() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    config = docs[("ConfigMap", "fleet-redis-config")]
    assert config["data"]["redis.conf"] == (K8S.parent / "redis" / "redis.conf").read_text()
    redis = docs[("StatefulSet", "fleet-redis")]
    pod = redis["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_volume = next(v["name"] for v in pod["volumes"]
                         if v.get("configMap", {}).get("name") == "fleet-redis-config")
    assert command[:2] == ["redis-server", f"{mounts[config_volume]}/redis.conf"]
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert command[command.index("--dir") + 1] in {mounts[name] for name in claims}
