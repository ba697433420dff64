#!/usr/bin/env bash
# Everything CI checks: formatting, clippy with warnings denied, and every
# test of the workspace. Installs what the tests need when it is missing
# (redis-server and redis-sentinel from Debian, rustfmt and clippy).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/install-redis.sh
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
