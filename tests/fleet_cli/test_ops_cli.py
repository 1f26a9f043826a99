"""`fleet ops ...`: the operator workflow of the README against a real registry service."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_cli.__main__ import main
from fleet_cli.processes import spawn, wait_until
from model_registry.rollouts import FORCED_MARK


@pytest.fixture
def registry_target(tmp_path: Path, redis_url: str) -> Iterator[str]:
    port_file = tmp_path / "registry.port"
    proc = spawn("registry", [sys.executable, "-m", "model_registry", "--port", "0",
                              "--port-file", str(port_file)], tmp_path,
                 {"FLEET_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}",
                  "FLEET_REDIS_URL": redis_url,  # no worker heartbeats there
                  "FLEET_REGISTRY_AUTH": "off"})  # keys: test_ops_access_cli.py
    try:
        wait_until(port_file.exists, 60, "registry port", proc)
        yield f"127.0.0.1:{port_file.read_text()}"
    finally:
        proc.stop()


def test_operator_workflow_as_in_the_readme(registry_target: str, tiny_checkpoints: dict[str, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def ops(*argv: str) -> dict:
        assert main(["ops", "--registry", registry_target, *argv]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    checkpoint = ops("checkpoint-register", "cl7b", str(tiny_checkpoints["infill"]),
                     "--actor", "ops")["checkpoint"]
    assert all(len(f["sha256"]) == 64 for f in checkpoint["files"])
    template = ops("template-create", "codellama-instruct", "--infill", "--chat-format",
                   "llama2", "--actor", "ops")["template"]
    for version in ("v1", "v2"):
        ops("version-create", "codellama-7b-instruct", version, "--checkpoint", "cl7b",
            "--template", f"codellama-instruct@{template['version']}", "--pool", "7b",
            "--max-model-len", "2048", "--actor", "ops")
    canary = ["canary-start", "codellama-7b-instruct", "v2", "--weight", "10", "--actor",
              "alice", "--reason", "new weights"]
    assert main(["ops", "--registry", registry_target, *canary]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: FAILED_PRECONDITION:") and "fleet.7b.codellama-7b-instruct.v2" \
        in err, err
    rollout = ops(*canary, "--force")["rollout"]
    assert (rollout["candidate_version"], rollout["candidate_weight"]) == ("v2", 10)

    # A second operator acting on what they saw before alice's change is refused, and says so.
    assert main(["ops", "--registry", registry_target, "canary-weight", "codellama-7b-instruct",
                 "50", "--actor", "bob", "--expected-revision", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ABORTED:") and "revision" in err, err

    assert ops("canary-weight", "codellama-7b-instruct", "20", "--actor", "alice",
               "--force")["rollout"]["candidate_weight"] == 20
    ops("promote", "codellama-7b-instruct", "--actor", "alice", "--reason", "healthy")
    events = ops("rollout-history", "codellama-7b-instruct")["events"]
    assert [(e["action"], e["actor"]) for e in events] == [
        ("create", "ops"), ("start_canary", "alice"), ("set_weight", "alice"),
        ("promote", "alice")]
    assert [e.get("reason", "") for e in events[1:3]] == [f"{FORCED_MARK} new weights",
                                                          FORCED_MARK]
    assert ops("rollout-show", "codellama-7b-instruct")["rollout"]["stable_version"] == "v2"
