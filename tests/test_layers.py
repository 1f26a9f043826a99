"""The import layers (pyproject.toml `[tool.importlinter]`) hold, and the contracts catch a
violation: the same configuration on a stub tree with one forbidden import fails.

Also: bench/ and fleet_cli/ touch no private attribute of the fleet's objects (`x._name`),
which import-linter cannot see.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOT_PACKAGES = ("prompting", "fleet_common", "fleet_server", "model_registry", "gateway",
                  "workers", "fleet_cli", "bench", "demo", "codellama")
#: Private uses the lead is removing; an entry that is gone must be deleted from here.
KNOWN_PRIVATE_USES: set[tuple[str, str]] = set()
#: Underscore names that are public API (namedtuple's).
PUBLIC_UNDERSCORE = {"_asdict", "_replace", "_fields", "_make"}


def _lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], check=False,
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_repository_keeps_every_import_contract() -> None:
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "3 kept" in done.stdout


def _importlinter_section() -> str:
    """pyproject.toml's import-linter tables, verbatim."""
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    kept: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("["):
            inside = line.lstrip("[").startswith("tool.importlinter")
        if inside:
            kept.append(line)
    return "\n".join(kept) + "\n"


def _stub_tree(root: Path, extra: dict[str, str]) -> Path:
    for package in ROOT_PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for relative, source in extra.items():
        (root / relative).write_text(source)
    config = root / "pyproject.toml"
    config.write_text(_importlinter_section())
    return config


def test_the_stub_tree_without_violations_passes(tmp_path: Path) -> None:
    _stub_tree(tmp_path, {"model_registry/records.py": "import fleet_common\n",
                          "gateway/server.py": "import model_registry\nimport fleet_server\n"})
    done = _lint_imports(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("files", "complaint"), [
    ({"model_registry/records.py": "import gateway\n"},
     "model_registry is not allowed to import gateway"),
    ({"fleet_common/keys.py": "import model_registry\n"},
     "fleet_common is not allowed to import model_registry"),
    ({"gateway/dispatch.py": "import workers\n"}, "gateway is not allowed to import workers"),
    ({"workers/tasks.py": "from gateway import servicer\n", "gateway/servicer.py": ""},
     "workers is not allowed to import gateway"),
    ({"fleet_common/wire.py": "import grpc\n"}, "fleet_common.wire -> grpc"),
    ({"prompting/formats.py": "from grpc_status import rpc_status\n"},
     "prompting.formats -> grpc_status"),
    ({"bench/admission.py": "from gateway._admit import admit\n", "gateway/_admit.py": ""},
     "bench.admission -> gateway._admit"),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, files: dict[str, str],
                                              complaint: str) -> None:
    _stub_tree(tmp_path, files)
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert complaint in done.stdout


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, expression) for each `x._name` whose `x` is not self, cls or a module or name
    imported from outside the fleet, and each private name imported from the fleet."""
    tree = ast.parse(source)
    outside: set[str] = {"self", "cls"}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            outside |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                        if alias.name.split(".")[0] not in ROOT_PACKAGES}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in ROOT_PACKAGES and node.level == 0:
                found += [(node.lineno, f"from {module} import {alias.name}")
                          for alias in node.names if _private(alias.name)]
            else:
                outside |= {alias.asname or alias.name for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if not (isinstance(root, ast.Name) and root.id in outside):
                found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def test_the_private_use_check_catches_what_it_should() -> None:
    source = (
        "import argparse\nimport sys\nfrom gateway.servicer import InferenceServicer\n"
        "from gateway.prompts import _internal\n"
        "def f(s: InferenceServicer, p: argparse._SubParsersAction) -> None:\n"
        "    s._admit()\n    sys._getframe()\n    self._own = 1\n    InferenceServicer._x\n"
        "    point._asdict()\n"
    )
    assert private_uses(source) == [(4, "from gateway.prompts import _internal"),
                                    (6, "s._admit"), (9, "InferenceServicer._x")]


def test_bench_and_the_cli_use_only_public_names_of_the_fleet() -> None:
    uses = {(str(path.relative_to(REPO)), expression): line
            for folder in ("bench", "fleet_cli") for path in sorted((REPO / folder).rglob("*.py"))
            for line, expression in private_uses(path.read_text())}
    unexpected = {f"{path}:{line}: {expr}" for (path, expr), line in uses.items()
                  if (path, expr) not in KNOWN_PRIVATE_USES}
    assert not unexpected, sorted(unexpected)
    gone = KNOWN_PRIVATE_USES - set(uses)
    assert not gone, f"fixed; remove from KNOWN_PRIVATE_USES: {sorted(gone)}"
