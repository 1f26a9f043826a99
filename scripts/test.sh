#!/usr/bin/env bash
# The test command: installs, checks generated protobuf code and the API lint, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
VENV="${FLEET_VENV:-.venv}"
export PATH="$PWD/$VENV/bin:$PATH"
./scripts/check_protos.sh
lint-imports --no-cache --no-logo  # the layers (pyproject.toml [tool.importlinter])
exec python -m pytest "$@"
