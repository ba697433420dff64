#!/usr/bin/env bash
# HTTP benchmark of the standalone issuer: client_credentials tokens for the
# sample client (config/samples), from the in-memory store and from Redis
# Sentinel with rate limiting on, against a bare hyper server answering the
# same request with a fixed body of the same size (sidecar/examples/bare_hyper.rs);
# then revocations on Redis, each waiting for a replica (WAIT).
#
# Each server runs pinned to CPU 0 and the load generator (wrk, 1 thread, 32
# connections) to CPU 1. Reported per server: requests/s, p99 latency, and
# the server's CPU time per request (utime+stime from /proc/PID/stat over the
# run / successful requests); then how CPU 0 was shared (server, other
# processes, hypervisor steal), to tell a quiet run from a noisy one. Any
# non-200 response fails the run.
#
# The Redis run: sidecar/examples/redis_cluster.rs starts a master, 2
# replicas and 3 Sentinels (the test harness's cluster, ACLs on) on CPU 1,
# next to the load generator, with an `issuer` ACL user holding only what the
# issuer needs. The issuer serves a copy of config/samples whose TokenPolicy
# limits per client and per source address at 1,000,000 requests/s: every
# token request runs the rate-limit script (both limits in one call) and is
# never limited. Then
# sidecar/examples/token_load.rs gets $REVOCATIONS tokens and revokes them
# all over 32 connections; the issuer's CPU is measured over the revocations
# only.
#
#   bash hack/bench.sh                 # DURATION=10 seconds per server
#   DURATION=30 REVOCATIONS=50000 bash hack/bench.sh
#
# The same run measures the floor of a token's cost on CPU 0:
# sidecar/examples/raw_sign.rs, one aws-lc-rs Ed25519 signature over a
# signing input as long as the token's, and prints the issuer's CPU per
# token against bare hyper's CPU per request plus that signature.
#
# Another OAuth2 server, side by side: with OTHER_URL (its token endpoint),
# OTHER_CLIENT_ID, OTHER_CLIENT_SECRET and OTHER_PID (the process whose CPU
# is counted; start it pinned to CPU 0 yourself, as hack/oidc-provider.sh
# does), the same wrk load runs against it too and its tokens per
# core-second are printed next to the issuer's. OTHER_NAME labels its row.
#
#   bash hack/oidc-provider.sh         # node-oidc-provider, side by side
#
# Signing and verification alone: cargo bench -p tokenplane-sidecar --bench jwt
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
REVOCATIONS=${REVOCATIONS:-20000}
ISSUER_ADDR=${ISSUER_ADDR:-127.0.0.1:18080}
BARE_ADDR=${BARE_ADDR:-127.0.0.1:18081}
REDIS_ISSUER_ADDR=${REDIS_ISSUER_ADDR:-127.0.0.1:18082}

BENCH=bench.sh
# shellcheck source=hack/bench-lib.sh
source hack/bench-lib.sh

cargo build --release -p tokenplane-sidecar --bin tokenplane-sidecar \
  --example bare_hyper --example redis_cluster --example token_load --example raw_sign

basic=$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)
wrk_script "$tmp/token.lua" POST grant_type=client_credentials \
  "Content-Type: application/x-www-form-urlencoded" "Authorization: Basic $basic"
CURL_ARGS=(-u "$client_id:$client_secret" -d grant_type=client_credentials)

# In memory.
start_server issuer 0 "http://$ISSUER_ADDR/oauth2/token" \
  "$bin/tokenplane-sidecar" issuer --manifests config/samples --listen "$ISSUER_ADDR"
load issuer "http://$ISSUER_ADDR/oauth2/token" "$tmp/token.lua"
stop "$server_pid" || true

# On Redis Sentinel, rate limited (never over the limit).
start_cluster
samples_with_keys "$tmp/samples"
limit='{requestsPerSecond: 1000000, burst: 1000000}'
sed -i "/^spec:\$/a\\  rateLimits: {perClient: $limit, perSourceAddress: $limit}" "$tmp/samples/tokenpolicy.yaml"
grep -q '^  rateLimits: ' "$tmp/samples/tokenpolicy.yaml" || die "could not add rateLimits to the sample TokenPolicy"
start_server issuer-redis 0 "http://$REDIS_ISSUER_ADDR/oauth2/token" \
  "$bin/tokenplane-sidecar" issuer --manifests "$tmp/samples" --listen "$REDIS_ISSUER_ADDR" \
  --redis-sentinels "$REDIS_SENTINELS" --redis-master "$REDIS_MASTER" \
  --redis-username "$REDIS_USERNAME" --redis-password-file "$REDIS_PASSWORD_FILE" \
  --redis-sentinel-username "$REDIS_SENTINEL_USERNAME" \
  --redis-sentinel-password-file "$REDIS_SENTINEL_PASSWORD_FILE"
load issuer-redis "http://$REDIS_ISSUER_ADDR/oauth2/token" "$tmp/token.lua" "$REDIS_MASTER_PID"

# Revocations: fresh access tokens first, then the measured revocations.
# token_load reads the client from the environment (not argv, which ps shows).
export CLIENT_ID=$client_id CLIENT_SECRET=$client_secret
tokens=(taskset -c 1 "$bin/examples/token_load")
run /dev/null "${tokens[@]}" fetch "http://$REDIS_ISSUER_ADDR" --tokens "$tmp/tokens" \
  --count "$REVOCATIONS" --connections "$CONNECTIONS" 2>"$tmp/fetch.log" ||
  die "could not get the tokens to revoke: $(cat "$tmp/fetch.log")"
master0=$(proc_ticks "$REDIS_MASTER_PID")
revoke_row=$(measure "issuer-redis(revoke)" "$server_pid" "$tmp/revoke.out" "${tokens[@]}" revoke \
  "http://$REDIS_ISSUER_ADDR" --tokens "$tmp/tokens" --connections "$CONNECTIONS")
master1=$(proc_ticks "$REDIS_MASTER_PID")
ok=$(field ok "$(grep '^RESULT ' "$tmp/revoke.out")")
notes+=("$(awk -v ok="$ok" -v t=$((master1 - master0)) -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "%.1f", t / hz * 1e6 / ok }')")

stop "$server_pid" || true
stop "$cluster_pid" || die "the Redis cluster reported a problem: $(tail -40 "$tmp/redis.log")"

# Bare hyper.
start_server bare-hyper 0 "http://$BARE_ADDR/oauth2/token" "$bin/examples/bare_hyper" "$BARE_ADDR"
load bare-hyper "http://$BARE_ADDR/oauth2/token" "$tmp/token.lua"
stop "$server_pid" || true

# The raw signature, on the same core.
sign_out=$(taskset -c 0 "$bin/examples/raw_sign" "$DURATION") || die "raw_sign failed"
sign_us=$(awk -v ok="$(field ok "$sign_out")" -v us="$(field cpu_us "$sign_out ")" 'BEGIN { printf "%.2f", us / ok }')

# Another server, if given.
if [[ -n ${OTHER_URL:-} ]]; then
  [[ -n ${OTHER_PID:-} && -n ${OTHER_CLIENT_ID:-} && -n ${OTHER_CLIENT_SECRET:-} ]] ||
    die "OTHER_URL needs OTHER_PID, OTHER_CLIENT_ID and OTHER_CLIENT_SECRET"
  other_basic=$(printf '%s:%s' "$OTHER_CLIENT_ID" "$OTHER_CLIENT_SECRET" | base64 -w0)
  wrk_script "$tmp/other.lua" POST grant_type=client_credentials \
    "Content-Type: application/x-www-form-urlencoded" "Authorization: Basic $other_basic"
  server_pid=$OTHER_PID
  load "${OTHER_NAME:-other}" "$OTHER_URL" "$tmp/other.lua"
fi

echo
echo "POST /oauth2/token (client_credentials, Basic auth), ${CONNECTIONS} connections, ${DURATION}s"
print_row server requests/s p99_ms cpu_us/request cpu0_server% cpu0_other% cpu0_steal% user_us/request
for r in "${rows[@]}"; do read -ra f <<<"$r"; print_row "${f[@]}"; done
awk -v m="${rows[0]}" -v r="${rows[1]}" -v h="${rows[2]}" -v redis="${notes[0]}" 'BEGIN {
  split(m, i, " "); split(r, d, " "); split(h, b, " ")
  printf "issuer/bare: %.2fx CPU per request, %.2fx requests/s\n", i[4] / b[4], i[2] / b[2]
  printf "redis/memory: %.2fx CPU per token (target: at most 1.25x), %.2fx requests/s\n", d[4] / i[4], d[2] / i[2]
  printf "Redis master (CPU 1): %s us CPU per token\n", redis
}'
echo "raw Ed25519 signature (aws-lc-rs, CPU 0): ${sign_us} us CPU"
awk -v m="${rows[0]}" -v h="${rows[2]}" -v sign="$sign_us" 'BEGIN {
  split(m, i, " "); split(h, b, " ")
  printf "issuer/(bare + raw sign): %.2fx CPU per token (target: at most 1.3x; %.1f / (%.1f + %.2f))\n",
    i[4] / (b[4] + sign), i[4], b[4], sign
  printf "issuer/(bare + raw sign), user space only: %.2fx (%.1f / (%.1f + %.2f))\n",
    i[8] / (b[8] + sign), i[8], b[8], sign
}'
if [[ -n ${OTHER_URL:-} ]]; then
  awk -v m="${rows[0]}" -v o="${rows[3]}" 'BEGIN {
    split(m, i, " "); split(o, x, " ")
    printf "tokens per core-second: issuer %.0f, %s %.0f: %.1fx\n", 1e6 / i[4], x[1], 1e6 / x[4], x[4] / i[4]
  }'
fi
echo
echo "POST /oauth2/revoke (fresh access tokens, WAIT for 1 replica), ${CONNECTIONS} connections, ${ok} tokens"
print_row server revocations/s p99_ms cpu_us/revocation cpu0_server% cpu0_other% cpu0_steal% user_us/request
read -ra f <<<"$revoke_row"
print_row "${f[@]}"
echo "Redis master (CPU 1): ${notes[1]} us CPU per revocation"
warn_noisy "${rows[@]}" "$revoke_row"
