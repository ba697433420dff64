#!/usr/bin/env bash
# Everything CI checks: formatting, clippy with warnings denied, and every
# test of the workspace. Installs what the tests need when it is missing
# (redis-server and redis-sentinel from Debian, rustfmt and clippy).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null || ! command -v redis-sentinel >/dev/null; then
  echo "installing redis-server and redis-sentinel"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-sentinel >/dev/null
  # The packages start a system Redis on :6379; the tests start their own.
  as_root service redis-server stop >/dev/null 2>&1 || true
  as_root service redis-sentinel stop >/dev/null 2>&1 || true
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
