#!/usr/bin/env bash
# Installs redis-server and redis-sentinel from Debian when missing, and stops
# the system instances the packages start: tests and benchmarks run their own.
set -euo pipefail
command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null && exit 0
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
echo "installing redis-server and redis-sentinel"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >/dev/null
as_root service redis-server stop >/dev/null 2>&1 || true
as_root service redis-sentinel stop >/dev/null 2>&1 || true
