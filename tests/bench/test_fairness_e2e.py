"""`python -m bench run --fairness` end to end on the tiny checkpoint (about a minute, most of
it the engine's start): one worker, a gateway with the registry's tenants (A with the default
quota, max_concurrent = capacity - 1), every phase run, every record labelled with its tenant,
the figures and the report section written.

32 output tokens, so that a request (about 0.4 s on the tiny model) outlasts the gateway's
admission refresh (0.25 s): with shorter ones the admitted-since-last-read count, which does
not subtract completions, refuses even the closed loop of `capacity` clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fairness_metrics import B_ALONE, CAPACITY, FLOOD, FLOOD_FIFO, PROBE, A, B

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def test_the_fairness_phase_runs_end_to_end(tmp_path: Path,
                                            tiny_checkpoints: dict[str, Path]) -> None:
    cmd = [sys.executable, "-m", "bench", "run",
           "--model-dir", str(tiny_checkpoints["infill"]), "--model-name", "tiny-fair",
           "--dtype", "float32", "--backends", "", "--admission-requests", "0",
           "--concurrency", "1", "--rates", "", "--warmup", "1",
           "--fairness", "--fairness-capacity", "2", "--fairness-seconds", "3",
           "--fairness-probe-seconds", "2", "--fairness-input-len", "24",
           "--fairness-output-len", "32", "--fairness-a-multiple", "10",
           "--no-fairness-no-admission", "--fairness-fifo",
           "--out-dir", str(tmp_path), "--no-progress"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run / "results.json").read_text())
    f = results["fairness"]
    assert list(f["phases"]) == [CAPACITY, B_ALONE, FLOOD, FLOOD_FIFO]
    assert set(f["phases"][CAPACITY]["tenants"]) == {PROBE}
    assert set(f["phases"][B_ALONE]["tenants"]) == {B}
    assert set(f["phases"][FLOOD]["tenants"]) == {A, B}
    assert f["a_rate_rps"] == pytest.approx(10 * f["b_rate_rps"])
    alone = f["phases"][B_ALONE]["tenants"][B]
    assert alone["completed"] == alone["requests"] > 0
    assert alone["queue_wait_ms"]["count"] == alone["completed"]
    flood = f["phases"][FLOOD]["tenants"]
    assert flood[B]["requests"] == alone["requests"]  # the same arrivals again
    assert flood[A]["requests"] >= 9 * alone["requests"]
    assert sum(flood[A]["statuses"].values()) == flood[A]["requests"]
    assert set(f["headline"]) == {FLOOD, FLOOD_FIFO}
    assert f["headline"][FLOOD]["b_ttft_p50_ratio"] is not None
    targets = [t["target"] for t in results["targets"] if "B's TTFT p50" in t["target"]]
    assert targets == [f"B's TTFT p50 while A sends 10x B's load vs B alone (`{FLOOD}`)"]
    failed = [c for c in results["checks"] if c["check"].startswith("fairness")
              and not c["ok"]]
    assert not failed, failed
    report = (run / "report.md").read_text()
    assert "## Fair share between tenants" in report and "| `b-with-a-flood` | tenant-b |" \
        in report
    records = json.loads((run / "fairness.json").read_text())
    tenants = {r["tenant"] for p in records["phases"].values() for r in p["records"]}
    assert tenants == {A, B, PROBE}  # the probe's: the warm-up, the capacity probe
