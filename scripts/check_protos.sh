#!/usr/bin/env bash
# Fails when protos/ and the committed generated code disagree, or when buf lint complains.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd protos && buf lint)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r codellama "$scratch/before"
./scripts/gen_protos.sh
if ! diff -r -x __pycache__ "$scratch/before" codellama >/dev/null; then
  diff -r -x __pycache__ "$scratch/before" codellama | head -40
  echo "generated protobuf code is stale: run scripts/gen_protos.sh and commit" >&2
  exit 1
fi
echo "protos: lint clean, generated code in sync"
