"""Settings: one flag per setting that wins over its variable; a mistyped `FLEET_*` variable
stops start-up naming the closest valid name; another role's variable is fine."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet_common.settings.base import FleetSettings, setting_fields
from fleet_common.settings.command_line import build_parser
from fleet_common.settings.environment import ROLES, known_names, unknown_settings
from fleet_common.settings.gateway import GatewaySettings
from fleet_common.settings.loading import load_settings
from fleet_common.settings.registry import RegistrySettings
from fleet_common.settings.worker import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
TYPO = "FLEET_REDIS_ULR"  # the mistyped name these tests (and the README) use


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLEET_"):
            monkeypatch.delenv(name)


def _options(cls: type[FleetSettings]) -> set[str]:
    parser = build_parser(cls, prog="test")
    return {flag for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("cls", ROLES)
def test_every_setting_has_a_flag_named_after_its_variable(cls: type[FleetSettings]) -> None:
    fields = list(setting_fields(cls))
    assert len(fields) >= 6
    options = _options(cls)
    for field in fields:
        expected = "--" + field.env_name.removeprefix("FLEET_").lower().replace("_", "-")
        assert expected in options, field.env_name


def test_the_flags_that_scripts_and_manifests_pass_still_exist() -> None:
    assert {"--host", "--port", "--port-file", "--redis-url", "--registry-url",
            "--limit-max-n", "--api-keys"} <= _options(GatewaySettings)
    assert {"--model", "--model-version", "--redis-url", "--registry-url", "--worker-name",
            "--concurrency", "--enforce-eager", "--no-enforce-eager", "--kv-cache-gib",
            } <= _options(WorkerSettings)
    assert {"--port", "--port-file", "--host", "--registry-port", "--registry-url",
            } <= _options(RegistrySettings)


def test_flags_set_every_kind_of_setting() -> None:
    gateway = load_settings(GatewaySettings, [
        "--port", "0", "--port-file", "/tmp/p", "--deadline-margin-s", "0.5",
        "--api-keys", '{"key-1": "team-a"}', "--limit-max-n", "3"], prog="test")
    assert (gateway.port, gateway.port_file, gateway.deadline_margin_s) == (0, "/tmp/p", 0.5)
    assert gateway.api_keys == {"key-1": "team-a"}
    assert gateway.limits.max_n == 3
    worker = load_settings(WorkerSettings, [
        "--model", "m", "--enforce-eager", "--no-verify-checksums", "--kv-cache-gib", "2"],
        prog="test")
    assert (worker.model, worker.enforce_eager, worker.verify_checksums,
            worker.kv_cache_gib) == ("m", True, False, 2)
    registry = load_settings(RegistrySettings, ["--port", "0", "--port-file", "f"], prog="test")
    assert (registry.registry_port, registry.registry_port_file) == (0, "f")


def test_a_flag_wins_over_its_variable_and_the_rest_still_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_PORT", "1234")
    monkeypatch.setenv("FLEET_HOST", "0.0.0.0")
    monkeypatch.setenv("FLEET_LIMIT_MAX_N", "5")
    monkeypatch.setenv("FLEET_LIMIT_MAX_MESSAGES", "7")
    monkeypatch.setenv("FLEET_API_KEYS", '{"from-env": "t"}')
    settings = load_settings(GatewaySettings, ["--port", "0", "--limit-max-n", "3"], prog="test")
    assert (settings.port, settings.host) == (0, "0.0.0.0")
    assert (settings.limits.max_n, settings.limits.max_messages) == (3, 7)
    assert settings.api_keys == {"from-env": "t"}
    unflagged = load_settings(GatewaySettings, [], prog="test")
    assert (unflagged.port, unflagged.limits.max_n) == (1234, 5)
    monkeypatch.setenv("FLEET_ENFORCE_EAGER", "true")
    assert load_settings(WorkerSettings, ["--no-enforce-eager"], prog="t").enforce_eager is False
    assert load_settings(WorkerSettings, [], prog="t").enforce_eager is True


def test_a_mistyped_variable_stops_start_up_naming_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TYPO, "redis://elsewhere:6379/0")
    monkeypatch.setenv("FLEET_LIMIT_MAX_NN", "3")
    for cls in ROLES:
        with pytest.raises(SystemExit) as stopped:
            load_settings(cls, [], prog="test")
        assert str(stopped.value) == (
            "unknown setting FLEET_LIMIT_MAX_NN; did you mean FLEET_LIMIT_MAX_N?\n"
            f"unknown setting {TYPO}; did you mean FLEET_REDIS_URL?")


def test_a_name_like_nothing_says_so() -> None:
    assert unknown_settings({"FLEET_ZZZZZZZZZZZZZZZZ": "1", "HOME": "/root"}) == [
        "unknown setting FLEET_ZZZZZZZZZZZZZZZZ; no setting has a similar name"]


def test_another_roles_variables_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"FLEET_MODEL": "m", "FLEET_KV_CACHE_GIB": "1",  # worker
                        "FLEET_API_KEYS": "{}", "FLEET_LIMIT_MAX_N": "2",  # gateway
                        "FLEET_CHECKPOINT_ROOT": "/models",  # registry
                        "FLEET_VENV": ".venv"}.items():  # scripts
        monkeypatch.setenv(name, value)
    assert load_settings(GatewaySettings, [], prog="test").limits.max_n == 2
    assert load_settings(WorkerSettings, [], prog="test").kv_cache_gib == 1
    assert load_settings(RegistrySettings, [], prog="test").checkpoint_root == "/models"


def test_an_invalid_value_stops_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEET_PORT", "not-a-port")
    with pytest.raises(SystemExit) as stopped:
        load_settings(GatewaySettings, [], prog="test")
    assert str(stopped.value).startswith("test: invalid settings:\n  FLEET_PORT (--port): ")
    assert str(stopped.value).endswith(", got 'not-a-port'")
    monkeypatch.delenv("FLEET_PORT")
    monkeypatch.setenv("FLEET_LIMIT_MAX_MESSAGES", "x")
    with pytest.raises(SystemExit) as stopped:  # the group is built from both flag and variable
        load_settings(GatewaySettings, ["--limit-max-n", "1"], prog="test")
    assert "FLEET_LIMIT_MAX_MESSAGES (--limit-max-messages): " in str(stopped.value)


def _texts(path: Path) -> str:
    """Where a variable's name can be: a Python file's strings, any other file's text."""
    text = path.read_text(errors="ignore")
    if path.suffix != ".py":
        return text
    return "\n".join(node.value for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str))


def test_every_fleet_variable_the_repository_mentions_is_known() -> None:
    """Scripts, tests, manifests and docs name only variables that start-up accepts."""
    known = known_names() | {TYPO}  # the README shows what a typo does
    mentioned: dict[str, str] = {}
    skip = {".git", ".venv", ".cache", "var", "node_modules", "__pycache__"}
    for path in REPO.rglob("*"):
        if skip & set(path.relative_to(REPO).parts) or not path.is_file() or \
                path == Path(__file__).resolve():  # this file holds typos on purpose
            continue
        if path.suffix not in {".py", ".sh", ".yaml", ".yml", ".md", ".toml"} and \
                path.name != "Dockerfile":
            continue
        for name in re.findall(r"\bFLEET_[A-Z0-9_]*[A-Z0-9]\b", _texts(path)):
            mentioned.setdefault(name, str(path.relative_to(REPO)))
    assert {"FLEET_REDIS_URL", "FLEET_MODEL", "FLEET_VENV"} <= set(mentioned)
    unknown = {name: where for name, where in mentioned.items() if name not in known}
    assert not unknown, f"read by nothing (add to OTHER_VARIABLES if a script reads it): {unknown}"


def _run_role(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    return subprocess.run([sys.executable, "-m", module, *args], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**clean, **env})


@pytest.mark.parametrize("module", ["gateway", "workers", "model_registry"])
def test_each_role_refuses_to_start_on_a_mistyped_variable(module: str) -> None:
    done = _run_role(module, {TYPO: "redis://x"})
    assert done.returncode == 1
    assert f"unknown setting {TYPO}; did you mean FLEET_REDIS_URL?" in done.stderr


def test_the_registry_starts_with_the_workers_variables_set_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "registry.port"
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLEET_")}
    env = {**clean, "FLEET_MODEL": "m", "FLEET_WORKER_NAME": "w", "FLEET_ENFORCE_EAGER": "true",
           "FLEET_REGISTRY_URL": f"sqlite:///{tmp_path / 'registry.db'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_registry", "--port", "0", "--port-file", str(port_file)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            if port_file.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert port_file.exists(), proc.communicate(timeout=10)[0]
        assert int(port_file.read_text()) > 0
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
        assert proc.returncode == 0, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
