#!/usr/bin/env bash
# One command for the demo: installs, prepares SmolLM2-135M-Instruct, starts Redis (if none
# answers), the registry, a worker and a gateway on 127.0.0.1:50051. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec "${FLEET_VENV:-.venv}/bin/fleet" up "$@"
