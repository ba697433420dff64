#!/usr/bin/env bash
# Admission latency of the standalone webhook (tokenplane-operator webhook,
# config/samples as its manifests) over HTTPS at a fixed rate of pod
# creations: the fixture pod (operator/tests/fixtures/pod-review.json)
# injected at RATE pods/s by oha, on kept-alive connections (as the API
# server holds them) and on a new TLS connection per pod. The webhook on
# CPU 0, oha on CPU 1. Installs oha with cargo when it is missing.
#
#   bash hack/bench-admission.sh          # RATE=200 pods/s, DURATION=20s
set -euo pipefail

cd "$(dirname "$0")/.."

RATE=${RATE:-200}
DURATION=${DURATION:-20}
ADDR=${ADDR:-127.0.0.1:18443}
die() { echo "bench-admission.sh: $*" >&2; exit 1; }

command -v oha >/dev/null || cargo install oha --locked
(( $(nproc) >= 2 )) || die "needs 2 CPUs: the webhook on CPU 0, oha on CPU 1"
cargo build --release -p tokenplane-operator --bin tokenplane-operator

tmp=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; [[ -n ${KEEP:-} ]] || rm -rf "$tmp"' EXIT
# shellcheck source=hack/serving-pair.sh
source hack/serving-pair.sh
serving_pair "$tmp"

taskset -c 0 "${CARGO_TARGET_DIR:-target}/release/tokenplane-operator" webhook --manifests config/samples \
  --listen "$ADDR" --tls-cert-file "$tmp/tls.crt" --tls-key-file "$tmp/tls.key" \
  --agent-redis-sentinels redis-sentinel.tokenplane-system.svc:26379 2>"$tmp/webhook.log" &
pid=$!
for _ in $(seq 100); do
  curl -sf --cacert "$tmp/ca.crt" "https://$ADDR/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf --cacert "$tmp/ca.crt" "https://$ADDR/healthz" >/dev/null || die "the webhook did not start: $(cat "$tmp/webhook.log")"

load() {
  taskset -c 1 oha --no-tui -q "$RATE" -z "${DURATION}s" -c 16 -m POST -T application/json \
    -D operator/tests/fixtures/pod-review.json --cacert "$tmp/ca.crt" "$@" "https://$ADDR/mutate-pods"
}
ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
for mode in kept-alive new-connection; do
  flags=()
  [[ $mode == new-connection ]] && flags=(--disable-keepalive)
  before=$(ticks)
  load "${flags[@]}" >"$tmp/$mode.txt"
  cpu=$(( $(ticks) - before ))
  echo "== $mode, $RATE pods/s for ${DURATION}s: webhook CPU $(awk -v t="$cpu" -v n="$((RATE * DURATION))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f µs per pod", t / hz / n * 1e6 }')"
  grep -E "Success rate|Requests/sec|Slowest|50.00%|99.00%|99.90%|\[[0-9]{3}\] [0-9]+ responses" "$tmp/$mode.txt"
done
