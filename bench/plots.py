"""PNG plots of a results document (matplotlib, Agg backend): nothing here measures anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"vllm": "#1f77b4", "vllm-server": "#ff7f0e", "fleet": "#2ca02c",
          "vllm-grpc": "#9467bd", "smg": "#d62728"}
NAMES = {"vllm": "vLLM alone", "vllm-server": "vLLM server", "fleet": "fleet",
         "vllm-grpc": "vLLM gRPC servicer", "smg": "SMG"}

THROUGHPUT = "throughput_vs_concurrency.png"
TTFT = "ttft_distribution.png"
OPEN_LOOP = "open_loop_latency.png"
CPU = "cpu_per_output_token.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _phases(results: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p["name"], p) for p in results["settings"]["phases"] if p["kind"] == kind]


def _plain_log_ticks(axis: Any) -> None:
    """Log axis labelled with plain numbers (no 2x10^2 minor labels running into each other)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def throughput_vs_concurrency(results: dict[str, Any], out: Path) -> Path | None:
    closed = _phases(results, "closed")
    if not closed:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend, data in results["backends"].items():
        xs, tput, ttft50, ttft99 = [], [], [], []
        for name, spec in closed:
            phase = data["phases"].get(name)
            if phase:
                xs.append(spec["concurrency"])
                tput.append(phase["metrics"]["output_throughput"])
                ttft50.append(phase["metrics"]["ttft_ms"]["p50"])
                ttft99.append(phase["metrics"]["ttft_ms"]["p99"])
        color = COLORS.get(backend)
        left.plot(xs, tput, "o-", color=color, label=NAMES.get(backend, backend))
        right.plot(xs, ttft50, "o-", color=color, label=f"{NAMES.get(backend, backend)} p50")
        right.plot(xs, ttft99, "s--", color=color, alpha=0.6,
                   label=f"{NAMES.get(backend, backend)} p99")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks([s["concurrency"] for _, s in closed],
                      [str(s["concurrency"]) for _, s in closed])
        ax.set_xlabel("concurrent requests (closed loop)")
        ax.grid(alpha=0.3)
    left.set_ylabel("output tokens/s")
    left.set_title("Throughput vs concurrency")
    left.set_ylim(bottom=0)
    left.legend()
    right.set_yscale("log")
    _plain_log_ticks(right.yaxis)
    right.set_ylabel("TTFT (ms)")
    right.set_title("Time to first token vs concurrency")
    right.legend(fontsize=7)
    fig.tight_layout()
    path = out / THROUGHPUT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ttft_distribution(results: dict[str, Any], out: Path) -> Path | None:
    closed = _phases(results, "closed")
    if not closed:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(closed), figsize=(4.2 * len(closed), 3.8), squeeze=False)
    for ax, (name, spec) in zip(axes[0], closed):
        lowest, highest = float("inf"), 0.0
        for backend, data in results["backends"].items():
            phase = data["phases"].get(name)
            if not phase:
                continue
            values = sorted(r["ttft"] * 1000 for r in phase["requests"] if r["success"])
            if not values:
                continue
            lowest, highest = min(lowest, values[0]), max(highest, values[-1])
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", color=COLORS.get(backend),
                    label=NAMES.get(backend, backend))
        wide = highest > 4 * lowest  # a log axis only when the values span a wide range
        if wide:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        ax.set_title(f"TTFT CDF, concurrency {spec['concurrency']}")
        ax.set_xlabel("TTFT (ms, log)" if wide else "TTFT (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / TTFT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def open_loop_latency(results: dict[str, Any], out: Path) -> Path | None:
    opened = _phases(results, "open")
    if not opened:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend, data in results["backends"].items():
        xs, ttft50, ttft99, e2e50, tput = [], [], [], [], []
        for name, spec in opened:
            phase = data["phases"].get(name)
            if phase:
                m = phase["metrics"]
                xs.append(spec["rate"])
                ttft50.append(m["ttft_ms"]["p50"])
                ttft99.append(m["ttft_ms"]["p99"])
                e2e50.append(m["e2el_ms"]["p50"] / 1000)
                tput.append(m["output_throughput"])
        color, label = COLORS.get(backend), NAMES.get(backend, backend)
        left.plot(xs, ttft50, "o-", color=color, label=f"{label} p50")
        left.plot(xs, ttft99, "s--", color=color, alpha=0.6, label=f"{label} p99")
        right.plot(xs, e2e50, "o-", color=color, label=label)
    left.set_ylim(bottom=0)
    left.set_xlabel("request rate (Poisson, req/s)")
    left.set_ylabel("TTFT (ms)")
    left.set_title("Open loop: time to first token")
    left.legend(fontsize=7)
    right.set_xlabel("request rate (Poisson, req/s)")
    right.set_ylabel("end-to-end latency p50 (s)")
    right.set_title("Open loop: end-to-end latency")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / OPEN_LOOP
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: Components of the engine itself (the same work in every backend): not serving overhead.
ENGINE_PARTS = ("engine core (scheduler)", "model executor")


def cpu_per_output_token(results: dict[str, Any], out: Path) -> Path | None:
    """Serving overhead: CPU ms per output token of everything but the engine, per backend,
    at the highest closed-loop concurrency (the engine's own figure is written above)."""
    closed = _phases(results, "closed")
    if not closed:
        return None
    name, spec = max(closed, key=lambda item: item[1]["concurrency"])
    bars = []
    for backend, data in results["backends"].items():
        phase = data["phases"].get(name)
        if phase and phase.get("cpu_ms_per_output_token"):
            bars.append((backend, phase["cpu_ms_per_output_token"]))
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    components: list[str] = []
    for _, parts in bars:
        components += [c for c in parts if c not in components and c not in ENGINE_PARTS]
    cmap = plt.get_cmap("tab10")
    labels = [NAMES.get(b, b) for b, _ in bars]
    bottoms = [0.0] * len(bars)
    for i, component in enumerate(components):
        heights = [parts.get(component) or 0.0 for _, parts in bars]
        ax.bar(labels, heights, bottom=bottoms, label=component, color=cmap(i % 10))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for x, ((_, parts), top) in enumerate(zip(bars, bottoms)):
        engine = sum(parts.get(c) or 0.0 for c in ENGINE_PARTS)
        ax.annotate(f"{top:.2f} ms\n(engine: {engine:.2f})", (x, top), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 3), textcoords="offset points")
    ax.set_ylim(top=max(bottoms) * 1.3 if max(bottoms) > 0 else 1)
    ax.set_ylabel("CPU ms per output token, engine excluded")
    ax.set_title(f"Serving overhead CPU at concurrency {spec['concurrency']}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out / CPU
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Every plot that the results support; none when matplotlib is missing."""
    try:
        _pyplot()
    except ImportError:
        return []
    made = []
    for fn in (throughput_vs_concurrency, ttft_distribution, open_loop_latency,
               cpu_per_output_token):
        path = fn(results, out)
        if path is not None:
            made.append(path)
    return made
