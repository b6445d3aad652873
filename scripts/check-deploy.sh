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
[ -f "$REQS" ] || die "missing $REQS"
. scripts/venv.sh
venv_with "$VENV" "$REQS" || die "no validators to check with"

# The validators' own commands are in the venv's bin.
PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/python" scripts/check_deploy.py
