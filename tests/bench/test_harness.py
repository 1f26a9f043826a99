"""The benchmark command itself, end to end on a tiny workload (about four minutes).

Runs `python -m bench run` with the tiny Code Llama checkpoint against vLLM alone, vLLM's
OpenAI server and the fleet (engine start-ups dominate), without prompt screening, plus a short gateway-alone admission run, then checks that the
numbers are consistent: token counts are the requested lengths, percentiles are ordered, the
ratios are those of the same run's metrics, and the report and plots were written.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.metrics import PERCENTILES

REPO = Path(__file__).resolve().parents[2]
INPUT_LEN, OUTPUT_LEN = 24, 12
PHASES = ("closed-c1", "closed-c3", "open-r5")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoints: dict[str, Path]
            ) -> Path:
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "bench", "run",
           "--model-dir", str(tiny_checkpoints["infill"]), "--model-name", "tiny-bench",
           "--dtype", "float32", "--backends", "vllm,vllm-server,fleet",
           "--input-len", str(INPUT_LEN), "--output-len", str(OUTPUT_LEN),
           "--concurrency", "1,3", "--closed-waves", "1", "--closed-min-requests", "3",
           "--rates", "5", "--open-requests", "4", "--warmup", "2",
           "--admission-requests", "150", "--admission-concurrency", "16",
           "--out-dir", str(out), "--no-progress"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def test_every_backend_ran_every_phase(results: dict[str, Any]) -> None:
    assert set(results["backends"]) == {"vllm", "vllm-server", "fleet"}
    for backend in results["backends"].values():
        assert tuple(backend["phases"]) == PHASES
        for phase in backend["phases"].values():
            assert phase["metrics"]["completed"] == phase["spec"]["num_requests"]
            assert phase["metrics"]["failed"] == 0


def test_token_counts_are_the_requested_lengths(results: dict[str, Any]) -> None:
    for backend in results["backends"].values():
        for phase in backend["phases"].values():
            for request in phase["requests"]:
                assert request["prompt_tokens"] == INPUT_LEN
                assert request["output_tokens"] == OUTPUT_LEN
            m = phase["metrics"]
            assert m["total_output_tokens"] == m["completed"] * OUTPUT_LEN


def test_percentiles_are_ordered_and_positive(results: dict[str, Any]) -> None:
    for backend in results["backends"].values():
        for phase in backend["phases"].values():
            for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
                d = phase["metrics"][key]
                values = [d["min"]] + [d[f"p{p}"] for p in PERCENTILES] + [d["max"]]
                assert values == sorted(values) and values[0] > 0, (key, d)
            m = phase["metrics"]
            assert m["ttft_ms"]["p50"] < m["e2el_ms"]["p50"]


def test_ratios_come_from_this_runs_metrics(results: dict[str, Any]) -> None:
    for name in PHASES:
        fleet = results["backends"]["fleet"]["phases"][name]["metrics"]
        alone = results["backends"]["vllm"]["phases"][name]["metrics"]
        cmp = results["comparisons"][name]
        assert cmp["fleet/vllm"]["output tok/s"] == pytest.approx(
            fleet["output_throughput"] / alone["output_throughput"])
        assert cmp["fleet/vllm"]["ITL p90"] == pytest.approx(
            fleet["itl_ms"]["p90"] / alone["itl_ms"]["p90"])
        assert cmp["fleet-vllm ttft_ms"]["p50"] == pytest.approx(
            fleet["ttft_ms"]["p50"] - alone["ttft_ms"]["p50"])
        server = results["backends"]["vllm-server"]["phases"][name]["metrics"]
        assert cmp["fleet/vllm-server"]["output tok/s"] == pytest.approx(
            fleet["output_throughput"] / server["output_throughput"])


def test_fleet_figures_and_checks(results: dict[str, Any]) -> None:
    fleet = results["backends"]["fleet"]
    assert fleet["verify"]["checked"] == fleet["verify"]["prompts_used"]
    for phase in fleet["phases"].values():
        hop = phase["extra_ms"]["queue_wait_ms"]
        assert hop["count"] == phase["metrics"]["completed"] and 0 <= hop["p50"]
        # the gateway's own TTFT is part of what the client sees
        assert phase["extra_ms"]["gateway_ttft_ms"]["p50"] <= phase["metrics"]["ttft_ms"]["p50"]
        assert set(phase["cpu_s"]) >= {"client", "gateway", "engine core (scheduler)",
                                       "model executor", "redis", "other processes"}
        assert phase["cpu_s"]["model executor"] > 0
    # (whether other processes disturbed the run is reported, not something a test controls)
    failed = [c for c in results["checks"] if not c["ok"] and "otherwise idle" not in c["check"]]
    assert not failed, failed


def test_admission_was_measured_and_counted_in_redis(results: dict[str, Any]) -> None:
    grpc = results["admission"]["grpc"]
    assert grpc["admitted"] == 150 == grpc["enqueued_in_redis"]
    assert grpc["requests_per_gateway_cpu_s"] > 0
    inproc = results["admission"]["inprocess"]
    assert inproc.get("error") is None and inproc["admitted"] == inproc["enqueued_in_redis"]


def test_report_and_plots_are_written(run_dir: Path, results: dict[str, Any]) -> None:
    report = (run_dir / "report.md").read_text()
    assert "## Targets" in report and "fleet / vLLM alone" in report
    for png in ("throughput_vs_concurrency.png", "ttft_distribution.png",
                "open_loop_latency.png", "cpu_per_output_token.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report
    assert results["machine"]["logical_cpus"] >= 1 and results["machine"]["date_utc"]
    # The report's reproduce command is a shell line that pins prompt screening.
    command = shlex.split(results["command"])
    assert command[:4] == ["python", "-m", "bench", "run"] and command[-1] == "--no-screen-prompts"
    assert f"Reproduce: `{results['command']}`" in report
    # re-rendering from results.json gives the same report
    subprocess.run([sys.executable, "-m", "bench", "report", str(run_dir)], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    assert (run_dir / "report.md").read_text() == report
