"""examples/review_bot end to end on the tiny checkpoint: a git range with two changed files,
one batch job of their hunks through a real gateway and vLLM workers, the webhook received and
its signature verified, one comment printed per hunk (the tiny model's words are noise; the
plumbing is real)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from examples.review_bot.__main__ import main
from tests.e2e.fleet_harness import Fleet
from tests.failures.conftest import MODEL, ensure_workers
from tests.failures.test_jobs import _start

pytestmark = pytest.mark.e2e


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=bot@example.com",
                    "-c", "user.name=bot", *args], check=True, capture_output=True)


def test_the_review_bot_reviews_every_hunk_of_a_range(fleet: Fleet, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "stack.py").write_text("class Stack:\n    def __init__(self):\n        self.items = []\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    (repo / "stack.py").write_text("class Stack:\n    def __init__(self):\n        self.items = []\n"
                                   "\n    def pop(self):\n        return self.items.pop()\n")
    (repo / "util.py").write_text("def add(a, b):\n    return a - b\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "two")
    ensure_workers(fleet)
    gateway = _start(fleet)
    try:
        code = main(["--repo", str(repo), "--range", "HEAD~1..HEAD", "--model", MODEL,
                     "--target", gateway.target, "--api-key", "key-a", "--max-tokens", "8",
                     "--wait-s", "120"])
    finally:
        gateway.process.stop()
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "webhook job.succeeded verified" in err
    comments = [line for line in out.splitlines() if not line.startswith("    ")]
    assert [c.split(": ", 1)[0] for c in comments] == ["stack.py:1", "util.py:1"], comments
    assert not any("not reviewed" in c for c in comments), comments
