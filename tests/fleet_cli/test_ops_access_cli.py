"""`fleet ops tenant-* / key-*` against a registry service that authenticates: the bootstrap key,
a key shown once, listings without secrets, scopes enforced, revocation by the whole key."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet_cli.__main__ import main
from fleet_cli.access_commands import SECRET_WARNING
from fleet_cli.processes import spawn, wait_until
from model_registry import bootstrap_key
from model_registry.reader import open_registry_reader
from model_registry.records import TenantPolicy
from model_registry.remote import GrpcRegistryReader


@pytest.fixture
def registry(tmp_path: Path, redis_url: str,
             capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[str, str]]:
    """(host:port, the operator key `python -m model_registry bootstrap-key` printed)."""
    database = f"sqlite:///{tmp_path / 'registry.db'}"
    assert bootstrap_key.main(["--tenant", "ops", "--registry-url", database]) == 0
    printed = capsys.readouterr()
    operator = printed.out.strip()
    assert operator.startswith("clf_") and "\n" not in operator, printed
    assert "only time it is shown" in printed.err
    port_file = tmp_path / "registry.port"
    proc = spawn("registry", [sys.executable, "-m", "model_registry", "--port", "0",
                              "--port-file", str(port_file)], tmp_path,
                 {"FLEET_REGISTRY_URL": database, "FLEET_REDIS_URL": redis_url})
    try:
        wait_until(port_file.exists, 60, "registry port", proc)
        yield f"127.0.0.1:{port_file.read_text()}", operator
    finally:
        proc.stop()


def test_tenants_and_keys_from_the_command_line(registry: tuple[str, str],
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target, operator = registry

    def ops(*argv: str, key: str | None = None) -> tuple[int, str, str]:
        flags = ["--api-key", key] if key else []
        code = main(["ops", "--registry", target, *flags, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, _, err = ops("tenant-list")
    assert code == 1 and err.startswith("error: UNAUTHENTICATED: RegistryService.ListTenants "
                                        "needs an API key") and "FLEET_API_KEY" in err, err

    code, out, err = ops("tenant-create", "acme", "--display-name", "ACME Corp.", key=operator)
    assert code == 0, err
    assert json.loads(out)["tenant"]["created_by"] == "ops/bootstrap"

    monkeypatch.setenv("FLEET_API_KEY", operator)  # what --api-key defaults to
    code, out, err = ops("key-create", "acme", "ci", "--scope", "inference", "--scope", "jobs",
                         "--expires-in", "30d")
    assert code == 0, err
    created = json.loads(out)
    secret, record = created["secret"], created["api_key"]
    assert secret.startswith(f"clf_{record['key_id']}_")
    assert record["scopes"] == ["API_KEY_SCOPE_INFERENCE", "API_KEY_SCOPE_JOBS"]
    expires = datetime.fromisoformat(record["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert SECRET_WARNING in err

    code, out, _ = ops("key-list", "--tenant", "acme")
    assert code == 0 and secret.split("_")[2] not in out
    assert [(k["name"], k["created_by"]) for k in json.loads(out)["api_keys"]] == [
        ("ci", "ops/bootstrap")]

    code, _, err = ops("tenant-create", "globex", key=secret)  # a write without operator
    assert code == 1 and err.startswith("error: PERMISSION_DENIED: RegistryService.CreateTenant "
                                        "needs scope 'operator'"), err
    assert ops("checkpoint-list", key=secret)[0] == 0  # reads need any scope

    code, out, err = ops("key-revoke", secret)  # the whole key names it; only its id is sent
    assert code == 0, err
    assert json.loads(out)["api_key"]["revoked_by"] == "ops/bootstrap"
    code, _, err = ops("checkpoint-list", key=secret)
    assert code == 1 and "UNAUTHENTICATED" in err and "(acme/ci) was revoked" in err, err


def test_a_bad_expiry_or_key_id_is_refused_before_calling(capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    for argv, needle in ((["key-create", "acme", "ci", "--scope", "inference", "--expires-in",
                           "30 days"], "expected a positive number and a unit"),
                         (["key-create", "acme", "ci", "--scope", "admin"], "invalid choice"),
                         (["key-revoke", "acme/ci"], "must be 16 lower-case hex digits")):
        with pytest.raises(SystemExit) as exited:
            main(["ops", "--registry", "127.0.0.1:1", *argv])
        assert exited.value.code == 2
        assert needle in capsys.readouterr().err


def test_tenant_policies_from_the_command_line_reach_both_snapshot_readers(
        registry: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, operator = registry

    def ops(*argv: str, key: str = operator) -> tuple[int, str, str]:
        code = main(["ops", "--registry", target, "--api-key", key, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = ops("tenant-create", "acme", "--max-concurrent", "4",
                         "--tokens-per-minute", "90000", "--max-priority", "normal")
    assert code == 0, err
    assert json.loads(out)["tenant"]["policy"] == {
        "tenant": "acme", "max_concurrent": 4, "requests_per_minute": 0, "tokens_per_minute": 90000,
        "max_queued_job_items": 0, "weight": 1, "max_priority": "PRIORITY_NORMAL"}
    code, out, err = ops("tenant-update", "acme", "--requests-per-minute", "600", "--weight", "3",
                         "--max-concurrent", "0")
    assert code == 0, err
    expected = {"tenant": "acme", "max_concurrent": 0, "requests_per_minute": 600, "tokens_per_minute": 90000,
                "max_queued_job_items": 0, "weight": 3, "max_priority": "PRIORITY_NORMAL"}
    assert json.loads(out)["tenant"]["policy"] == expected
    code, out, _ = ops("tenant-list")
    listed = {t["name"]: t["policy"] for t in json.loads(out)["tenants"]}
    assert listed["acme"] == expected and listed["ops"]["max_priority"] == "PRIORITY_HIGH"

    code, _, err = ops("tenant-update", "acme", "--weight", "0")
    assert code == 1 and err.strip() == (
        "error: INVALID_ARGUMENT: policy.weight: must be 1 to 1000, got 0"), err
    code, _, err = ops("tenant-update", "initech", "--weight", "2")
    assert code == 1 and "NOT_FOUND: tenant 'initech' does not exist" in err, err
    code, out, err = ops("key-create", "acme", "app", "--scope", "inference")
    assert code == 0, err
    app = json.loads(out)["secret"]
    code, _, err = ops("tenant-update", "acme", "--weight", "9", key=app)
    assert code == 1 and "PERMISSION_DENIED: RegistryService.UpdateTenantPolicy needs scope " \
                         "'operator'" in err, err
    with pytest.raises(SystemExit):
        ops("tenant-update", "acme", "--max-concurrent", "-1")
    assert "expected 0 (no limit) or a positive whole number, got '-1'" in capsys.readouterr().err

    # Gateways read the policies with the keys, over gRPC (with an inference key) or directly.
    remote = GrpcRegistryReader.from_url(f"grpc://{target}", api_key=app)
    direct = open_registry_reader(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        policies = remote.auth_snapshot().policies
        assert policies == direct.auth_snapshot().policies
        assert policies == (TenantPolicy("acme", requests_per_minute=600, tokens_per_minute=90000,
                                         weight=3, max_priority="normal"), TenantPolicy("ops"))
    finally:
        remote.close()
        direct.close()
