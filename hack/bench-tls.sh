#!/usr/bin/env bash
# HTTPS benchmark of the standalone issuer (in memory, config/samples):
# client_credentials tokens over plain HTTP, over kept-alive TLS
# connections, and over a new TLS connection per request (Keycloak's sizing
# case: every grant pays a handshake). The serving certificate is ECDSA
# P-256 from a throwaway CA (openssl). Same method as hack/bench.sh: the
# issuer on CPU 0, wrk (1 thread) on CPU 1, CPU time from /proc.
#
# A new connection per request is wrk with `Connection: close`: the issuer
# answers and closes, wrk reconnects and handshakes again. wrk's own
# handshakes (OpenSSL) share CPU 1 and may bound the rate; the issuer's CPU
# per grant, and so its grants per core-second, do not depend on that.
#
#   bash hack/bench-tls.sh             # DURATION=10 seconds per row
#   CONNECTIONS=64 bash hack/bench-tls.sh
set -euo pipefail

cd "$(dirname "$0")/.."

BENCH=bench-tls.sh
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
ADDR=${ADDR:-127.0.0.1:18085}

# shellcheck source=hack/bench-lib.sh
source hack/bench-lib.sh

cargo build --release -p tokenplane-sidecar --bin tokenplane-sidecar

# shellcheck source=hack/serving-pair.sh
source hack/serving-pair.sh
serving_pair "$tmp"

basic=$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)
headers=("Content-Type: application/x-www-form-urlencoded" "Authorization: Basic $basic")
wrk_script "$tmp/token.lua" POST grant_type=client_credentials "${headers[@]}"
wrk_script "$tmp/close.lua" POST grant_type=client_credentials "${headers[@]}" "Connection: close"
issuer=("$bin/tokenplane-sidecar" issuer --manifests config/samples --listen "$ADDR")

CURL_ARGS=(-u "$client_id:$client_secret" -d grant_type=client_credentials)
start_server issuer-http 0 "http://$ADDR/oauth2/token" "${issuer[@]}"
load issuer-http "http://$ADDR/oauth2/token" "$tmp/token.lua"
stop "$server_pid" || true

CURL_ARGS+=(--cacert "$tmp/ca.crt")
start_server issuer-https 0 "https://$ADDR/oauth2/token" "${issuer[@]}" \
  --tls-cert-file "$tmp/tls.crt" --tls-key-file "$tmp/tls.key"
load issuer-https "https://$ADDR/oauth2/token" "$tmp/token.lua"
load https-new-conn "https://$ADDR/oauth2/token" "$tmp/close.lua"
stop "$server_pid" || true

echo
echo "POST /oauth2/token (client_credentials, Basic auth, EdDSA tokens, ECDSA P-256 certificate), ${CONNECTIONS} connections, ${DURATION}s"
print_row server requests/s p99_ms cpu_us/request cpu0_server% cpu0_other% cpu0_steal% user_us/request
for r in "${rows[@]}"; do read -ra f <<<"$r"; print_row "${f[@]}"; done
awk -v p="${rows[0]}" -v t="${rows[1]}" -v n="${rows[2]}" 'BEGIN {
  split(p, a, " "); split(t, b, " "); split(n, c, " ")
  printf "kept-alive TLS / plain HTTP: %.2fx CPU per token (target: at most 1.15x)\n", b[4] / a[4]
  printf "new TLS connection per grant: %.0f grants/s measured, %.0f grants per core-second of issuer CPU (target: at least 1,200)\n",
    c[2], 1e6 / c[4]
}'
warn_noisy "${rows[@]}"
