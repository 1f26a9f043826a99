"""Fair share between two tenants, from the records of `bench.fairness`.

Per phase and tenant: requests, statuses (refusals by status), *completed* requests (good: OK
within their deadline with every token, `bench.overload_metrics.is_good`), tokens per second
(the tokens of the good requests that finished inside the phase's window, over the window:
the same accounting as the overload phase's goodput) and TTFT p50/p90/p99 of the good ones.

The headline, for each phase in which A floods (`FLOODS`), against the issue's item 5:

- `b_ttft_p50_ratio`: B's TTFT p50 with A's flood / B's TTFT p50 alone; target <= 1.5x;
- `b_completed_ratio`: B's completed requests with the flood / alone (B's arrival times are
  the same in both phases). Not in the issue, but a TTFT over B's *admitted* requests says
  nothing when the flood got most of B's requests refused, so it is a target too: >= 0.95x;
- `a_share_of_left`: A's tokens/s with the flood / the capacity B leaves (the `capacity`
  probe's tokens/s minus B's tokens/s in that phase). The issue says "A still gets the
  capacity B leaves" without a number; >= 0.9x, the overload phase's target, is ours.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.metrics import distribution_ms
from bench.overload_metrics import is_good

#: The two tenants (registry tenants, each with its own API key; A may have a max_concurrent
#: quota), the probe's tenant (no quota: the warm-up, the capacity probe and the FIFO control
#: send its key) and the phases, in order.
A, B, PROBE = "tenant-a", "tenant-b", "tenant-probe"
CAPACITY, B_ALONE, FLOOD, FLOOD_NO_ADMISSION, FLOOD_FIFO, A_ALONE = (
    "capacity", "b-alone", "b-with-a-flood", "b-with-a-flood-no-admission",
    "b-with-a-flood-fifo", "a-alone")
TARGET_TTFT_RATIO = 1.5
TARGET_B_COMPLETED = 0.95
TARGET_A_SHARE = 0.9
MEASURED = (CAPACITY, B_ALONE, FLOOD, FLOOD_NO_ADMISSION, FLOOD_FIFO, A_ALONE)
#: The phases in which A floods; the last is the control (one tenant, first come first served),
#: whose figures show what fair share changes rather than a target.
FLOODS = (FLOOD, FLOOD_NO_ADMISSION, FLOOD_FIFO)
REFUSED = "RESOURCE_EXHAUSTED"


def tenant_summary(records: list[dict[str, Any]], window_s: float, deadline_s: float,
                   output_len: int, offered_rps: float | None = None) -> dict[str, Any]:
    good = [r for r in records if is_good(r, deadline_s, output_len)]
    in_window = [r for r in good if r["end"] <= window_s]
    refused = [r for r in records if r["code"] == REFUSED]
    statuses = Counter(r["code"] for r in records)
    if len(good) < statuses.get("OK", 0):
        statuses["OK (late or short)"] = statuses["OK"] - len(good)
        statuses["OK"] = len(good)
    return {
        "requests": len(records),
        "offered_rps": offered_rps if offered_rps is not None else len(records) / window_s,
        "completed": len(good),
        "completed_in_window": len(in_window),
        "goodput_rps": len(in_window) / window_s,
        "tokens_per_s": sum(r["tokens"] for r in in_window) / window_s,
        "tokens_delivered": sum(r["tokens"] for r in records),
        "statuses": dict(sorted(statuses.items())),
        "refused": len(refused),
        "refusals_with_pushback": sum(1 for r in refused if r["pushback_ms"] is not None),
        "refusals_with_retry_info": sum(1 for r in refused if r["retry_delay_ms"] is not None),
        "ttft_ms": distribution_ms([r["ttft"] for r in good if r["ttft"] is not None]),
        "latency_ms": distribution_ms([r["end"] - r["start"] for r in good]),
        "queue_wait_ms": distribution_ms([r["queue_wait_ms"] / 1000 for r in good
                                          if r.get("queue_wait_ms") is not None]),
        "refusal_ms": distribution_ms([r["end"] - r["start"] for r in refused]),
        "examples": {code: next(r["detail"] for r in records if r["code"] == code)
                     for code in sorted(statuses) if code not in ("OK", "OK (late or short)")},
    }


def phase_summary(phase: dict[str, Any], deadline_s: float, output_len: int) -> dict[str, Any]:
    window = float(phase["window_s"])
    rates = phase.get("rates") or {}
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for record in phase["records"]:
        by_tenant.setdefault(record["tenant"], []).append(record)
    for tenant in rates:  # a tenant that offered load but has no record still shows
        by_tenant.setdefault(tenant, [])
    return {
        "window_s": window,
        "duration_s": phase["duration_s"],
        "concurrency": phase.get("concurrency"),
        "rates": rates,
        "ran_out_of_prompts": bool(phase.get("ran_out")),
        "settle_wait_s": phase.get("settle_wait_s"),
        "tenants": {t: tenant_summary(recs, window, deadline_s, output_len, rates.get(t))
                    for t, recs in sorted(by_tenant.items())},
    }


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def headline(phases: dict[str, Any], flood: str) -> dict[str, Any] | None:
    """The figures of one flood phase against B alone and the capacity probe."""
    if flood not in phases or B_ALONE not in phases:
        return None
    alone = phases[B_ALONE]["tenants"].get(B)
    b = phases[flood]["tenants"].get(B)
    a = phases[flood]["tenants"].get(A)
    if alone is None or b is None:
        return None
    probe = phases.get(CAPACITY, {}).get("tenants", {})
    capacity = probe.get(PROBE, probe.get(A))
    capacity_tps = capacity["tokens_per_s"] if capacity else None
    left = None if capacity_tps is None else capacity_tps - b["tokens_per_s"]
    a_tps = a["tokens_per_s"] if a else 0.0

    def p(d: dict[str, Any], key: str) -> float | None:
        return d["ttft_ms"][key] if d["ttft_ms"]["count"] else None

    def wait(d: dict[str, Any]) -> float | None:
        return d["queue_wait_ms"]["p50"] if d["queue_wait_ms"]["count"] else None

    out = {
        "control": flood == FLOOD_FIFO,
        "b_ttft_p50_alone_ms": p(alone, "p50"), "b_ttft_p50_ms": p(b, "p50"),
        "b_queue_wait_p50_alone_ms": wait(alone), "b_queue_wait_p50_ms": wait(b),
        "b_ttft_p50_ratio": _ratio(p(b, "p50"), p(alone, "p50")),
        "b_ttft_p90_ratio": _ratio(p(b, "p90"), p(alone, "p90")),
        "b_completed_alone": alone["completed"], "b_completed": b["completed"],
        "b_completed_ratio": _ratio(b["completed"], alone["completed"]),
        "b_refused": b["refused"], "b_statuses": b["statuses"],
        "b_tokens_per_s": b["tokens_per_s"],
        "a_tokens_per_s": a_tps, "a_refused": a["refused"] if a else 0,
        "capacity_tokens_per_s": capacity_tps, "capacity_left_tokens_per_s": left,
        "a_share_of_left": _ratio(a_tps, left) if left is not None and left > 0 else None,
    }
    ratio, served, share = (out["b_ttft_p50_ratio"], out["b_completed_ratio"],
                            out["a_share_of_left"])
    out["passed"] = {
        "b_ttft": None if ratio is None else ratio <= TARGET_TTFT_RATIO,
        "b_completed": None if served is None else served >= TARGET_B_COMPLETED,
        "a_share": None if share is None else share >= TARGET_A_SHARE,
    }
    if out["control"]:  # what B gets without fair share: no target
        out["passed"] = dict.fromkeys(out["passed"])
    return out


def summarize(raw: dict[str, Any], deadline_s: float, output_len: int) -> dict[str, Any]:
    """Every measured phase's per-tenant summary and the headline of each flood phase."""
    phases = {name: phase_summary(raw["phases"][name], deadline_s, output_len)
              for name in MEASURED if name in raw.get("phases", {})}
    heads = {name: h for name in FLOODS if (h := headline(phases, name)) is not None}
    return {"phases": phases, "headline": heads, "b_rate_rps": raw.get("b_rate"),
            "a_rate_rps": raw.get("a_rate")}


def fairness_result(raw: dict[str, Any], settings: Any) -> dict[str, Any]:
    """`results.json`'s `fairness`: the summary, the settings, CPU per phase."""
    f = settings.fairness
    result = summarize(raw["runner"], f.deadline_s, f.output_len)
    result["settings"] = settings.to_json()["fairness"]
    result["a_max_concurrent"] = f.a_quota
    result["cpu_s"] = {name: used for name, used in raw.get("cpu_s", {}).items()
                       if name in result["phases"]}
    result["machine_before"] = raw.get("machine_before", {})
    return result


def _target(name: str, value: float | None, limit: str, passed: bool | None,
            detail: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "limit": limit, "passed": passed, "detail": detail}


def fairness_targets(fairness: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not fairness:
        return []
    multiple = (fairness.get("settings") or {}).get("a_multiple", 10)
    out = []
    for name, h in fairness["headline"].items():
        if h.get("control"):
            continue
        where = f" (`{name}`)"
        out.append(_target(f"B's TTFT p50 while A sends {multiple:g}x B's load vs B alone"
                           + where, h["b_ttft_p50_ratio"], f"<= {TARGET_TTFT_RATIO:g}x",
                           h["passed"]["b_ttft"], "over B's completed requests"))
        out.append(_target("B's completed requests with A's flood vs B alone" + where,
                           h["b_completed_ratio"], f">= {TARGET_B_COMPLETED:g}x",
                           h["passed"]["b_completed"],
                           f"B refused {h['b_refused']} times"))
        out.append(_target("A's tokens/s vs the capacity B leaves" + where,
                           h["a_share_of_left"], f">= {TARGET_A_SHARE:g}x",
                           h["passed"]["a_share"], "capacity probe's tokens/s minus B's"))
    return out


def fairness_checks(fairness: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The run measured what it claims: capacity served, B alone unrefused, same B load."""
    if not fairness:
        return []
    out: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        out.append({"check": f"fairness {name}", "ok": bool(ok), "detail": detail})

    phases = fairness["phases"]
    for name, p in phases.items():
        if p["ran_out_of_prompts"]:
            check(f"{name}: the client never ran out of prompts", False)
        for tenant, t in p["tenants"].items():
            check(f"{name} {tenant}: every RESOURCE_EXHAUSTED carries RetryInfo and the "
                  "grpc-retry-pushback-ms trailer",
                  t["refusals_with_pushback"] == t["refused"] == t["refusals_with_retry_info"],
                  f"{t['refused']} refusals, {t['refusals_with_pushback']} with the trailer, "
                  f"{t['refusals_with_retry_info']} with RetryInfo")
    for name in (CAPACITY, B_ALONE):
        for tenant, t in phases.get(name, {}).get("tenants", {}).items():
            check(f"{name} {tenant}: every request OK within its deadline",
                  t["statuses"] == {"OK": t["requests"]}, str(t["statuses"]))
    offered = {name: p["tenants"][B]["requests"] for name, p in phases.items()
               if B in p["tenants"]}
    check("B offered the same requests in every phase it ran in",
          len(set(offered.values())) <= 1, str(offered))
    return out


# ------------------------------------------------------------------------------------------
# the report's section


def _f(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _pct(d: dict[str, Any], digits: int = 0) -> str:
    if not d["count"]:
        return "n/a"
    return " / ".join(_f(d[k], digits) for k in ("p50", "p90", "p99"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def phase_rows(fairness: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, p in fairness["phases"].items():
        for tenant, t in p["tenants"].items():
            load = (f"{p['concurrency']} clients" if p["concurrency"]
                    else f"{_f(t['offered_rps'], 2)} req/s")
            statuses = ", ".join(f"{code} {n}" for code, n in t["statuses"].items())
            rows.append([f"`{name}`", tenant, load, str(t["requests"]), str(t["completed"]),
                         _f(t["tokens_per_s"], 1), _pct(t["ttft_ms"]),
                         _pct(t["queue_wait_ms"]), statuses])
    return rows


def _mark(ok: bool | None, control: bool) -> str:
    return "control" if control else {True: "met", False: "**missed**", None: "n/a"}[ok]


def headline_rows(fairness: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, h in fairness["headline"].items():
        control, passed = bool(h.get("control")), h["passed"]
        ttft = (f"{_f(h['b_ttft_p50_ms'], 0)} / {_f(h['b_ttft_p50_alone_ms'], 0)} = "
                f"{_x(h['b_ttft_p50_ratio'])} ({_mark(passed['b_ttft'], control)})")
        completed = (f"{h['b_completed']} / {h['b_completed_alone']} = "
                     f"{_x(h['b_completed_ratio'])} ({_mark(passed['b_completed'], control)})")
        wait = (f"{_f(h.get('b_queue_wait_p50_ms'), 0)} / "
                f"{_f(h.get('b_queue_wait_p50_alone_ms'), 0)}")
        share = (f"{_f(h['a_tokens_per_s'])} / {_f(h['capacity_left_tokens_per_s'])} = "
                 f"{_x(h['a_share_of_left'])} ({_mark(passed['a_share'], control)})")
        rows.append([f"`{name}`", ttft, completed, str(h["b_refused"]), wait, share])
    return rows


def report_lines(results: dict[str, Any]) -> list[str]:
    """The report's section (empty when the run had no fairness phase)."""
    f = results.get("fairness")
    if not f:
        return []
    s = f["settings"]
    lines = ["## Fair share between tenants", "",
             (f"One worker with {s['capacity']} slots open to every tenant (FLEET_CAPACITY) "
              f"and {s.get('reserve', 0)} more for tenants under their fair share "
              f"(FLEET_FAIR_SHARE_RESERVE; FLEET_CONCURRENCY = FLEET_MAX_NUM_SEQS = their sum), "
              f"a gateway with two registry tenants "
              f"(API keys; A's max_concurrent quota "
              f"{f.get('a_max_concurrent') or 'none'}, B none); "
              f"every request {s['input_len']} prompt tokens -> exactly {s['output_len']} "
              f"tokens, deadline {s['deadline_s']:g} s, priority NORMAL. *capacity*: a closed "
              f"loop of {s['capacity']} clients of {PROBE} (no quota) for "
              f"{s['probe_seconds']:g} s; *b-alone*: B's "
              f"Poisson arrivals at {_f(f['b_rate_rps'], 2)} req/s for {s['seconds']:g} s; "
              f"*b-with-a-flood*: the same arrivals of B and A's at {s['a_multiple']:g}x that "
              f"({_f(f['a_rate_rps'], 2)} req/s), through the gateway with admission control "
              f"(queue factor {s['queue_factor']:g}); *-no-admission*: the same through a "
              "gateway with admission control off. Completed: OK within the deadline with "
              "every token; tokens/s: of those that finished inside the window; TTFT: of the "
              "completed ones."), ""]
    lines += _table(["phase", "tenant", "offered", "requests", "completed", "tokens/s",
                     "TTFT ms p50 / p90 / p99", "queue wait ms p50 / p90 / p99", "statuses"],
                    phase_rows(f)) + [""]
    if f["headline"]:
        lines += _table(["flood phase", "B TTFT p50 ms: flood / alone",
                         "B completed: flood / alone", "B refused",
                         "B queue wait p50 ms: flood / alone",
                         "A tokens/s / capacity B leaves"], headline_rows(f)) + [""]
    cpu_rows = []
    for name, used in f.get("cpu_s", {}).items():
        window = f["phases"][name]["duration_s"]
        busy = [f"{k} {_f(v / window, 2)}" for k, v in used.items() if v > 0.01 * window]
        cpu_rows.append(f"`{name}`: " + ", ".join(busy))
    if cpu_rows:
        lines += ["Cores busy per process over each phase: " + "; ".join(cpu_rows) + ".", ""]
    examples = {code: text for p in f["phases"].values() for t in p["tenants"].values()
                for code, text in t["examples"].items()}
    if examples:
        lines += ["What the statuses said, one example each:", ""]
        lines += [f"- {code}: `{text}`" for code, text in sorted(examples.items())] + [""]
    return lines
