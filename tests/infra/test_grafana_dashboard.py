"""infra/grafana/codellama-fleet.json: every PromQL expression parses (promql-parser) and names
only the fleet's metric contract, with labels those metrics have; the panels the issue asks for
are there; the layout is sound; and the contract is the one the code registers."""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import promql_parser as pq
import pytest
from prometheus_client import REGISTRY

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "codellama-fleet.json"

# The metric contract (issue 14): series name -> (type, label names). Every process serves its
# own on /metrics: gateway 9100, worker 9101, registry 9102.
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    # gateway
    "fleet_requests_total": ("counter", frozenset({"model", "version", "mode", "code"})),
    "fleet_time_to_first_token_seconds": ("histogram", frozenset({"model", "version"})),
    "fleet_inter_token_latency_seconds": ("histogram", frozenset({"model", "version"})),
    "fleet_e2e_request_latency_seconds": ("histogram", frozenset({"model", "version"})),
    "fleet_queue_wait_seconds": ("histogram", frozenset({"model", "version"})),
    "fleet_prompt_tokens_total": ("counter", frozenset({"tenant", "model", "version"})),
    "fleet_completion_tokens_total": ("counter", frozenset({"tenant", "model", "version"})),
    "fleet_quota_refusals_total": ("counter", frozenset({"tenant", "reason"})),
    "fleet_rollout_weight": ("gauge", frozenset({"model", "version"})),
    # the autoscaling signal (every gateway)
    "fleet_queue_depth": ("gauge", frozenset({"queue", "model", "version", "pool", "priority"})),
    "fleet_queue_in_flight": ("gauge", frozenset({"queue", "model", "version", "pool"})),
    "fleet_queue_live_workers": ("gauge", frozenset({"queue", "model", "version", "pool"})),
    "fleet_queue_worker_capacity": ("gauge", frozenset({"queue", "model", "version", "pool"})),
    "fleet_desired_workers": ("gauge", frozenset({"queue", "model", "version", "pool"})),
    # worker
    "fleet_worker_in_flight": ("gauge", frozenset({"worker", "queue"})),
    "fleet_engine_running_requests": ("gauge", frozenset({"worker", "queue"})),
    "fleet_engine_waiting_requests": ("gauge", frozenset({"worker", "queue"})),
    "fleet_engine_kv_cache_usage_ratio": ("gauge", frozenset({"worker", "queue"})),
    # registry
    "fleet_registry_requests_total": ("counter", frozenset({"method", "code"})),
    "fleet_webhook_deliveries_total": ("counter", frozenset({"outcome"})),
}
# Labels Prometheus adds to every scraped series (kubernetes_sd pod role with the usual relabeling).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "node"})
# The modules that register the contract's metrics, and the process that serves them.
EXPORTERS = {"gateway": ["gateway.autoscale_signal", "gateway.request_metrics"],
             "worker": ["workers.metrics"],
             "registry": ["model_registry.service", "model_registry.metrics"]}
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def series_labels() -> dict[str, frozenset[str]]:
    """Every series name the contract makes queryable (a histogram's _bucket, _sum, _count), with
    the labels a query may match or group on."""
    out = {}
    for name, (kind, labels) in CONTRACT.items():
        labels = labels | TARGET_LABELS
        if kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict) -> Iterator[tuple[dict, str]]:
    """(panel, expr) of every query of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target["expr"]


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def as_promql(expr: str) -> str:
    """The expression as Prometheus gets it: Grafana's intervals become a duration and a
    variable (used only inside regex matchers here) its All value."""
    return VARIABLE.sub(".*", GRAFANA_INTERVALS.sub("5m", expr))


def selectors(node) -> list[pq.VectorSelector]:
    found: list[pq.VectorSelector] = []

    def visit(n):
        if isinstance(n, pq.VectorSelector):
            found.append(n)
        return True

    pq.walk(node, visit)
    return found


def check(expr: str) -> list[str]:
    """What is wrong with one PromQL expression against the contract; [] if nothing."""
    known = series_labels()
    problems = []
    tree = pq.parse(as_promql(expr))  # raises ValueError on a syntax error
    for selector in selectors(tree):
        name = selector.name or next((m.value for m in selector.matchers.matchers
                                      if m.name == "__name__"), None)
        if name not in known:
            problems.append(f"{name!r} is not a metric of the contract")
            continue
        for matcher in selector.matchers.matchers:
            if matcher.name != "__name__" and matcher.name not in known[name]:
                problems.append(f"{name} has no label {matcher.name!r}")

    def visit(n):
        if isinstance(n, pq.AggregateExpr) and n.modifier is not None:
            available = set().union(*(known.get(s.name, frozenset()) for s in selectors(n.expr)))
            for label in n.modifier.labels:
                if label not in available:
                    problems.append(f"{n}: grouped by {label!r}, which none of its metrics has")
        if isinstance(n, pq.Call) and n.func.name == "histogram_quantile":
            inner = selectors(n.args[1])
            if not inner or not all(s.name.endswith("_bucket") for s in inner):
                problems.append(f"{n}: histogram_quantile over no _bucket series")
        return True

    pq.walk(tree, visit)
    return problems


def test_every_expression_parses_and_names_only_contract_metrics(dashboard: dict) -> None:
    exprs = list(targets(dashboard))
    assert len(exprs) >= 20
    problems = {expr: check(expr) for _, expr in exprs}
    assert {expr: p for expr, p in problems.items() if p} == {}


def test_the_checker_refuses_what_is_not_in_the_contract() -> None:
    assert check("sum(rate(fleet_requests_total[5m]))") == []
    assert check("rate(vllm:num_requests_running[5m])")
    assert check('sum(rate(fleet_requests_total{tenant="a"}[5m]))')  # no tenant label
    assert check("sum by (tenant) (rate(fleet_requests_total[5m]))")
    assert check("histogram_quantile(0.9, sum by (le) (rate(fleet_queue_wait_seconds_sum[5m])))")
    assert check("fleet_desired_worker")
    with pytest.raises(ValueError):
        check("sum(rate(fleet_requests_total[5m])")


def test_template_variables_are_defined_and_query_contract_metrics(dashboard: dict) -> None:
    defined = variables(dashboard)
    assert defined["datasource"]["type"] == "datasource"
    assert defined["datasource"]["query"] == "prometheus"
    used = {a or b for _, expr in targets(dashboard) for a, b in VARIABLE.findall(expr)}
    used -= {"__rate_interval", "__interval", "__range"}
    assert used and used <= set(defined)
    label_values = re.compile(r"^label_values\((.+),\s*(\w+)\)$")
    for name, variable in defined.items():
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else \
            variable["query"]
        selector, label = label_values.match(query).groups()
        assert check(selector) == [], name
        (parsed,) = selectors(pq.parse(as_promql(selector)))
        assert label in series_labels()[parsed.name], name


def test_every_panel_queries_the_chosen_prometheus(dashboard: dict) -> None:
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_the_layout_has_unique_ids_and_no_overlapping_panels(dashboard: dict) -> None:
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], cells.get((x, y)))
                cells[(x, y)] = p["title"]


def _panels_using(dashboard: dict, *metrics: str) -> list[tuple[dict, list[str]]]:
    found = []
    for panel in all_panels(dashboard):
        exprs = [t["expr"] for t in panel.get("targets", [])]
        names = {s.name for e in exprs for s in selectors(pq.parse(as_promql(e)))}
        if set(metrics) <= names:
            found.append((panel, exprs))
    return found


def test_the_dashboard_shows_what_an_operator_needs(dashboard: dict) -> None:
    def grouped_by(expr: str, label: str) -> bool:
        return bool(re.search(rf"by \([^)]*\b{label}\b", expr))

    # Traffic and errors by model.
    traffic = _panels_using(dashboard, "fleet_requests_total")
    assert any(all(grouped_by(e, "model") for e in exprs) for _, exprs in traffic)
    assert any(any('code!="OK"' in e and grouped_by(e, "model") for e in exprs)
               for _, exprs in traffic)
    # TTFT and ITL percentiles.
    for metric in ("fleet_time_to_first_token_seconds", "fleet_inter_token_latency_seconds"):
        (panel, exprs), = _panels_using(dashboard, f"{metric}_bucket")
        quantiles = {float(re.match(r"histogram_quantile\(([\d.]+),", e).group(1))
                     for e in exprs}
        assert {0.5, 0.99} <= quantiles and panel["fieldConfig"]["defaults"]["unit"] == "s"
    # Queue depth and desired vs live workers per pool.
    assert any(all(grouped_by(e, "pool") for e in exprs)
               for _, exprs in _panels_using(dashboard, "fleet_queue_depth"))
    assert any(all(grouped_by(e, "pool") for e in exprs) for _, exprs in
               _panels_using(dashboard, "fleet_desired_workers", "fleet_queue_live_workers"))
    # Tenants' token use.
    for metric in ("fleet_prompt_tokens_total", "fleet_completion_tokens_total"):
        assert any(all(grouped_by(e, "tenant") for e in exprs)
                   for _, exprs in _panels_using(dashboard, metric))


SIGNAL = {"fleet_queue_depth", "fleet_queue_in_flight", "fleet_queue_live_workers",
          "fleet_queue_worker_capacity", "fleet_desired_workers"}


def aggregates_signal_other_than_by_max(expr: str) -> bool:
    """True if an aggregation other than max applies to an autoscaling gauge directly."""
    found = []

    def visit(n):
        if (isinstance(n, pq.AggregateExpr) and str(n.op) != "max"
                and isinstance(n.expr, pq.VectorSelector) and n.expr.name in SIGNAL):
            found.append(n)
        return True

    pq.walk(pq.parse(as_promql(expr)), visit)
    return bool(found)


def test_the_gateway_s_gauges_are_taken_as_max_over_gateways(dashboard: dict) -> None:
    """Every gateway exports the same autoscaling values: a sum over gateways would multiply
    them by the number of gateways. Sum over queues only after max over gateways."""
    assert aggregates_signal_other_than_by_max("sum by (pool) (fleet_desired_workers)")
    assert not aggregates_signal_other_than_by_max(
        "sum by (pool) (max by (queue, pool) (fleet_desired_workers))")
    for _, expr in targets(dashboard):
        assert not aggregates_signal_other_than_by_max(expr), expr


def test_the_contract_is_what_the_code_registers() -> None:
    """Each contract metric the code defines has the contract's type and labels; the gateway's
    and the workers' must all be there (the registry's come with its exporter)."""
    for modules in EXPORTERS.values():
        for module in modules:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:  # an exporter not written yet
                if exc.name != module:
                    raise
    registered = {}
    for collector in list(REGISTRY._collector_to_names):
        for family in collector.describe() if hasattr(collector, "describe") else []:
            registered[family.name] = (family.type, collector)
    checked = set()
    for name, (kind, labels) in CONTRACT.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        if base not in registered:
            continue
        family_type, collector = registered[base]
        assert family_type == kind, name
        assert frozenset(collector._labelnames) == labels, name
        checked.add(name)
    gateway_and_workers = {n for n in CONTRACT if not n.startswith(("fleet_registry_",
                                                                    "fleet_webhook_"))}
    assert gateway_and_workers <= checked, gateway_and_workers - checked
