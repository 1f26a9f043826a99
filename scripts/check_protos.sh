#!/usr/bin/env bash
# Fails when buf lint complains, when protos/ breaks what it was before this change (buf
# breaking, rules in protos/buf.yaml), or when protos/ and the committed generated code disagree.
#
# "Before this change": HEAD when protos/ has uncommitted edits (a working tree), else HEAD~1
# (CI on a clean checkout of main tests the last commit). PROTOS_BASE_REF=<ref> names the base
# instead, e.g. the merge base of a pull request (it must exist). No previous commit (first
# commit, shallow clone, no git) or a base without protos/: the check is skipped, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd protos && buf lint)
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

breaking="skipped"
if git rev-parse --git-dir >/dev/null 2>&1; then
  if [ -n "${PROTOS_BASE_REF:-}" ]; then
    base="$PROTOS_BASE_REF"
  elif [ -n "$(git status --porcelain -- protos)" ]; then
    base=HEAD
  else
    base=HEAD~1
  fi
  if ! commit="$(git rev-parse --verify --quiet "$base^{commit}")"; then
    if [ -n "${PROTOS_BASE_REF:-}" ]; then
      echo "protos: PROTOS_BASE_REF=$PROTOS_BASE_REF names no commit" >&2
      exit 1
    fi
    echo "protos: no commit $base to compare against; buf breaking skipped" >&2
  elif ! git cat-file -e "$commit:protos/buf.yaml" 2>/dev/null; then
    echo "protos: $base has no protos/buf.yaml; buf breaking skipped" >&2
  else
    mkdir "$scratch/base"
    git archive "$commit" protos | tar -x -C "$scratch/base"
    (cd protos && buf breaking --against "$scratch/base/protos")
    breaking="none against $base (${commit:0:12})"
  fi
else
  echo "protos: not a git checkout; buf breaking skipped" >&2
fi

cp -r codellama "$scratch/before"
./scripts/gen_protos.sh
if ! diff -r -x __pycache__ "$scratch/before" codellama >/dev/null; then
  diff -r -x __pycache__ "$scratch/before" codellama | head -40
  echo "generated protobuf code is stale: run scripts/gen_protos.sh and commit" >&2
  exit 1
fi
echo "protos: lint clean, breaking changes: $breaking, generated code in sync"
