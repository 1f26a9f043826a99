#!/usr/bin/env bash
# Regenerates the committed Python code for protos/ (import root matches the proto package).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf codellama
python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
  $(find protos -name '*.proto' | sort)
for d in codellama codellama/fleet codellama/fleet/v1 codellama/fleet/internal codellama/fleet/internal/v1; do
  echo '"""Generated from protos/ by scripts/gen_protos.sh; do not edit."""' > "$d/__init__.py"
done
