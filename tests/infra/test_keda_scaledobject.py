"""The chart's KEDA ScaledObjects: valid against KEDA's CRD schema (vendored, v2.20.2) and its
prometheus scaler's parameters; broken ones fail; and the query reads the metric the gateway
exports, for the queue the worker consumes."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import promql_parser
import pytest
from prometheus_client import REGISTRY

from fleet_common.keys import queue_name
from tests.infra.test_helm_chart import by_kind, chart, workers

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return chart.render(helm=chart.ensure_helm())


@pytest.fixture(scope="module")
def scaled_objects(docs: list[dict]) -> dict[str, dict]:
    objects = by_kind(docs, "ScaledObject")
    assert objects
    return objects


def _selector(query: str) -> promql_parser.VectorSelector:
    """The one vector selector of a ScaledObject's query, parsed as PromQL."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(promql_parser.parse(query), visit)
    (selector,) = found
    return selector


def test_the_vendored_crd_is_keda_s_and_its_schema_loads() -> None:
    schema = chart.scaledobject_schema()  # checks the file's sha256 against its header
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["scaleTargetRef", "triggers"]
    assert spec["properties"]["triggers"]["items"]["required"] == ["metadata", "type"]
    assert spec["additionalProperties"] is False  # closed, as the API server applies it


def test_every_scaledobject_validates(scaled_objects: dict[str, dict]) -> None:
    for name, doc in scaled_objects.items():
        assert chart.scaledobject_errors(doc) == [], name


def _broken(doc: dict, how: str) -> dict:
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    trigger = spec["triggers"][0]
    if how == "misspelt trigger field":
        trigger["metdata"] = trigger.pop("metadata")
    elif how == "no query":
        del trigger["metadata"]["query"]
    elif how == "empty query":
        trigger["metadata"]["query"] = "  "
    elif how == "misspelt scaler parameter":
        trigger["metadata"]["activationThreshhold"] = trigger["metadata"].pop(
            "activationThreshold")
    elif how == "threshold not a string":
        trigger["metadata"]["threshold"] = 1
    elif how == "threshold not a number":
        trigger["metadata"]["threshold"] = "one"
    elif how == "ignoreNullValues not a bool":
        trigger["metadata"]["ignoreNullValues"] = "no"
    elif how == "misspelt spec field":
        spec["minReplicas"] = spec.pop("minReplicaCount")
    elif how == "min above max":
        spec["minReplicaCount"] = spec["maxReplicaCount"] + 1
    elif how == "no trigger type":
        trigger["type"] = ""
    elif how == "no triggers":
        spec["triggers"] = []
    elif how == "fallback without replicas":
        del spec["fallback"]["replicas"]
    elif how == "scale-down policy without period":
        del spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
            "policies"][0]["periodSeconds"]
    elif how == "negative cooldown":
        spec["cooldownPeriod"] = -1
    else:
        raise AssertionError(how)
    return doc


@pytest.mark.parametrize("how", [
    "misspelt trigger field", "no query", "empty query", "misspelt scaler parameter",
    "threshold not a string", "threshold not a number", "ignoreNullValues not a bool",
    "misspelt spec field", "min above max", "no trigger type", "no triggers",
    "fallback without replicas", "scale-down policy without period", "negative cooldown",
])
def test_a_broken_scaledobject_fails_validation(scaled_objects: dict[str, dict],
                                                how: str) -> None:
    doc = next(iter(scaled_objects.values()))
    errors = chart.scaledobject_errors(_broken(doc, how))
    assert errors, how
    assert chart.errors_of([_broken(doc, how)]), how
    if how in ("no query", "empty query"):
        assert any('missing required parameter "query"' in e for e in errors)


# KEDA's own table for the prometheus scaler's metadata: v2.20.2
# pkg/scalers/prometheus_scaler_test.go, testPromMetadata (metadata, isError), transcribed. The
# schema must agree with KEDA's parser on each (unknown keys aside: KEDA ignores metricName).
_S, _T, _Q, _N = ("http://localhost:9090", "100", "up", "http_requests_total")
KEDA_PROMETHEUS_METADATA_CASES = [
    ({}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q}, False),
    ({"serverAddress": _S, "threshold": _T, "query": _Q, "namespace": "foo"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "ignoreNullValues": "false"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "activationThreshold": "50"}, False),
    ({"serverAddress": "", "metricName": _N, "threshold": _T, "query": _Q}, True),
    ({"serverAddress": _S, "metricName": _N, "query": _Q}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": "one", "query": _Q}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "activationThreshold": "one",
      "query": _Q}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": ""}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "ignoreNullValues": "xxxx"}, True),
    ({"serverAddress": "https://localhost:9090", "metricName": _N, "threshold": _T,
      "query": _Q, "unsafeSsl": "true"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "customHeaders": "key1=value1,key2=value2"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "customHeaders": "key1=value1,key2"}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "queryParameters": "key1=value1,key2=value2"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "queryParameters": "key1=value1,key2"}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "timeout": "1000"}, False),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "timeout": "-1"}, True),
    ({"serverAddress": _S, "metricName": _N, "threshold": _T, "query": _Q,
      "timeout": "a"}, True),
]


@pytest.mark.parametrize("metadata, is_error", KEDA_PROMETHEUS_METADATA_CASES)
def test_the_scaler_schema_agrees_with_keda_s_own_test_table(metadata: dict,
                                                             is_error: bool) -> None:
    errors = chart.prometheus_metadata_errors(metadata, known_keys_only=False)
    assert bool(errors) == is_error, errors
    if not is_error and "metricName" in metadata:
        # KEDA no longer reads it: the chart's stricter check would refuse it.
        assert chart.prometheus_metadata_errors(metadata)


# --- the query reads what the code exports ----------------------------------------------------

def _exported_desired_workers_name() -> str:
    """The metric name gateway/autoscale_signal.py exports, read from its source (the constant
    DESIRED_WORKERS) and checked against the gauge the module registers."""
    source = (GATEWAY / "autoscale_signal.py").read_text()
    (line,) = [line for line in source.splitlines() if line.startswith("DESIRED_WORKERS = ")]
    name = line.split("=", 1)[1].strip().strip("\"'")
    from gateway import autoscale_signal

    assert autoscale_signal.DESIRED_WORKERS == name
    families = {m.name: m for m in REGISTRY.collect()}
    assert families[name].type == "gauge"
    gauge = autoscale_signal.DESIRED
    assert gauge._name == name and "queue" in gauge._labelnames
    return name


def test_each_query_names_the_exported_metric_and_the_worker_s_queue(
        docs: list[dict], scaled_objects: dict[str, dict]) -> None:
    exported = _exported_desired_workers_name()
    deployments = workers(docs)
    for name, doc in scaled_objects.items():
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        parsed = promql_parser.parse(query)
        assert isinstance(parsed, promql_parser.AggregateExpr) and str(parsed).startswith("max(")
        selector = _selector(query)
        assert selector.name == exported
        matchers = {m.name: (m.op, m.value) for m in selector.matchers.matchers}
        target = deployments[doc["spec"]["scaleTargetRef"]["name"]]
        labels = target["spec"]["template"]["metadata"]["labels"]
        expected_queue = queue_name(labels["pool"], labels["model"], labels["version"])
        assert matchers == {"queue": (promql_parser.MatchOp.Equal, expected_queue)}, name


def test_extra_matchers_narrow_the_query_to_one_release() -> None:
    docs = chart.render({"autoscaling": {"prometheus": {"extraMatchers": 'namespace="prod"'}}},
                        helm=chart.ensure_helm())
    assert chart.errors_of(docs) == []
    for doc in by_kind(docs, "ScaledObject").values():
        matchers = {m.name: m.value
                    for m in _selector(doc["spec"]["triggers"][0]["metadata"]["query"])
                    .matchers.matchers}
        assert matchers["namespace"] == "prod" and matchers["queue"].startswith("fleet.")


def test_replicas_follow_the_signal_activate_from_zero_and_scale_down_slowly(
        scaled_objects: dict[str, dict]) -> None:
    for name, doc in scaled_objects.items():
        spec = doc["spec"]
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        # AverageValue with target 1: the HPA's ceil(value / target) is the signal itself.
        assert trigger["metricType"] == "AverageValue" and float(meta["threshold"]) == 1
        assert all(math.ceil(d / float(meta["threshold"])) == d for d in range(20))
        # One waiting request makes the signal 1: above the activation threshold.
        assert float(meta["activationThreshold"]) < 1
        # A missing series is an error (the fallback holds the workers), not a 0.
        assert meta["ignoreNullValues"] == "false"
        assert spec["fallback"]["behavior"] == "currentReplicasIfHigher"
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300, name
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}], name
