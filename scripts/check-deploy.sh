#!/usr/bin/env bash
# Checks what operators plug hotline into, offline: the Kubernetes manifests
# (deploy/kubernetes, with kubernetes-validate --strict at the oldest Kubernetes release still
# supported upstream and the newest the validator knows), the Dockerfile and
# docker-compose.yml with every file it mounts. Neither the image nor compose is built or run:
# scripts/check_deploy.py says what is and is not checked.
#
# The validators live in a virtualenv under target/deploy-venv, installed from the exact pins
# in deploy/requirements.txt and reused while those pins are unchanged. Needs python3 (3.9 or
# later) and access to PyPI the first time. Non-interactive; exits non-zero naming every
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'check-deploy: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

VENV=target/deploy-venv
REQS=deploy/requirements.txt
PYTHON=${PYTHON:-python3}

command -v "$PYTHON" >/dev/null 2>&1 || die "needs $PYTHON (3.9 or later) on PATH"
[ -f "$REQS" ] || die "missing $REQS"

# The stamp records the pins the venv was installed from: different pins, a fresh venv.
stamp="$VENV/.requirements"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQS" "$stamp"; then
  say "installing the validators into $VENV (pins from $REQS)"
  rm -rf "$VENV"
  mkdir -p target
  "$PYTHON" -m venv "$VENV" || die "could not create a virtualenv in $VENV (python3-venv missing?)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --require-virtualenv -r "$REQS" \
    || die "pip could not install $REQS"
  cp "$REQS" "$stamp"
else
  say "reusing $VENV"
fi

# The validators' own commands are in the venv's bin.
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" scripts/check_deploy.py
