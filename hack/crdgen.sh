#!/usr/bin/env bash
# Regenerates crds/*.yaml from the Rust types in crds/src. The test
# operator/tests/crds_fresh.rs fails until this is run after a type change.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet -p tokenplane-operator -- crdgen --out crds
