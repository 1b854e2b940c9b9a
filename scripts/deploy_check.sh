#!/usr/bin/env bash
# Checks deploy/ (alert rules and their unit tests, runbooks, the Grafana dashboard, the Kubernetes
# manifests against the Kubernetes schemas). Needs promtool (Debian `prometheus`) and kubectl (for
# `kubectl kustomize`); installs kubernetes-validate from PyPI into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 PyYAML==6.0.3
fi
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/python" scripts/deploy_check.py "$@"
