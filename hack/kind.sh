#!/usr/bin/env bash
# A kind cluster with the e2e suite's setup (images built from this
# checkout, Redis Sentinel, the operator) and no scenarios run, kept for
# trying things by hand. See e2e/README.md.
#
#   hack/kind.sh              create it, or update a running one
#   SCENARIOS=a hack/kind.sh  also apply the sample TokenPolicy and clients
#   hack/kind.sh delete       delete it
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-up}" in
  up) KEEP=1 SCENARIOS="${SCENARIOS:-none}" exec bash e2e/run.sh ;;
  delete | down) exec kind delete cluster --name "${CLUSTER:-tokenplane-e2e}" ;;
  *)
    echo "usage: hack/kind.sh [up|delete]" >&2
    exit 2
    ;;
esac
