"""`python -m bench.job_interference` end to end on the tiny checkpoint, tiny settings: the
fleet starts with JobService, a batch runs beside the interactive load, is cancelled, and the
report says the ratio (not judged here: speed is shown by the published run, not tests)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def test_the_batch_interference_run_measures_both_loads(tmp_path: Path,
                                                        tiny_checkpoints: dict[str, Path]
                                                        ) -> None:
    cmd = [sys.executable, "-m", "bench.job_interference",
           "--model-dir", str(tiny_checkpoints["infill"]), "--model-name", "tiny-jobs",
           "--dtype", "float32", "--batch-items", "40", "--interactive-requests", "6",
           "--concurrency", "2", "--output-len", "8", "--repeat", "1",
           "--worker-capacity", "4", "--job-window", "2", "--run-dir", str(tmp_path / "runs"),
           "--report", str(tmp_path / "jobs.md"), "--json", str(tmp_path / "results.json")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    [round_] = results["rounds"]
    assert round_["alone_p50_ms"] > 0 and round_["batch_p50_ms"] > 0
    assert results["ratio"] == pytest.approx(round_["batch_p50_ms"] / round_["alone_p50_ms"])
    assert 0 <= round_["batch_items_ended"] <= 40
    report = (tmp_path / "jobs.md").read_text()
    assert f"{results['ratio']:.2f}x (target at most 1.1x" in report
    assert "40 items of 8 tokens, at most 2 in the queues at once" in report
