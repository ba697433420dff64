#!/usr/bin/env bash
# Benchmark of the agent (tokenplane-sidecar agent), with the method of
# hack/bench.sh: the measured server pinned to CPU 0, everything else on
# CPU 1, CPU time per request from /proc, bare hyper in the same run.
#
# Set-up on CPU 1: the Redis cluster of sidecar/examples/redis_cluster.rs
# with $REVOKED revoked token ids written first, and an issuer on it
# (config/samples and a signing-keys Secret). The agent (CPU 0) gets the sample client's credentials
# and the cluster's `agent` ACL user, and remembers up to 200,000 verified
# tokens. Then:
#
# 1. first-seen: sidecar/examples/token_load.rs fetches $TOKENS tokens from
#    the issuer; wrk posts each to /v1/validate at most once for
#    $FIRST_DURATION seconds (the run fails if it runs out of tokens), so
#    every validation verifies an Ed25519 signature;
# 2. memory: token_load has the agent validate every token (those wrk did
#    not reach are verified now); then the agent's RSS, holding $TOKENS
#    verified tokens and $REVOKED revocations;
# 3. verified: wrk posts one already verified token to /v1/validate for
#    $DURATION seconds;
# 4. bare hyper: the same wrk script against sidecar/examples/bare_hyper.rs;
# 5. the raw Ed25519 verification of one token, with criterion
#    (benches/jwt.rs, "verify/Ed25519 raw"), pinned to CPU 0.
#
#   bash hack/bench-agent.sh
#   DURATION=30 TOKENS=100000 REVOKED=100000 bash hack/bench-agent.sh
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
FIRST_DURATION=${FIRST_DURATION:-4}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
TOKENS=${TOKENS:-100000}
REVOKED=${REVOKED:-100000}
AGENT_ADDR=${AGENT_ADDR:-127.0.0.1:18083}
ISSUER_ADDR=${ISSUER_ADDR:-127.0.0.1:18084}
BARE_ADDR=${BARE_ADDR:-127.0.0.1:18081}

BENCH=bench-agent.sh
# shellcheck source=hack/bench-lib.sh
source hack/bench-lib.sh

cargo build --release -p tokenplane-sidecar --bin tokenplane-sidecar \
  --example bare_hyper --example redis_cluster --example token_load

REVOKED=$REVOKED start_cluster

samples_with_keys "$tmp/samples"
start_server issuer 1 "http://$ISSUER_ADDR/.well-known/jwks.json" \
  "$bin/tokenplane-sidecar" issuer --manifests "$tmp/samples" --listen "$ISSUER_ADDR" \
  --redis-sentinels "$REDIS_SENTINELS" --redis-master "$REDIS_MASTER" \
  --redis-username "$REDIS_USERNAME" --redis-password-file "$REDIS_PASSWORD_FILE" \
  --redis-sentinel-username "$REDIS_SENTINEL_USERNAME" \
  --redis-sentinel-password-file "$REDIS_SENTINEL_PASSWORD_FILE"

audience=$(awk '/^  audiences:/ { gsub(/[][]/, ""); print $2; exit }' config/samples/oauth2client.yaml)
[[ -n $audience ]] || die "no audience in config/samples/oauth2client.yaml"
mkdir -m 700 "$tmp/credentials"
printf '%s' "$client_id" >"$tmp/credentials/client_id"
printf '%s' "$client_secret" >"$tmp/credentials/client_secret"
printf '%s' "$REDIS_AGENT_USERNAME" >"$tmp/credentials/redis_username"
cp "$REDIS_AGENT_PASSWORD_FILE" "$tmp/credentials/redis_password"
start_server agent 0 "http://$AGENT_ADDR/readyz" \
  "$bin/tokenplane-sidecar" agent --issuer "http://$ISSUER_ADDR" --credentials-dir "$tmp/credentials" \
  --listen "$AGENT_ADDR" --audience "$audience" --verified-cache 200000 \
  --redis-sentinels "$REDIS_SENTINELS" --redis-master "$REDIS_MASTER" \
  --redis-sentinel-username "$REDIS_SENTINEL_USERNAME" \
  --redis-sentinel-password-file "$REDIS_SENTINEL_PASSWORD_FILE"
agent_pid=$server_pid
rss_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$agent_pid/status"; }
rss_synced=$(rss_kib VmRSS)

export CLIENT_ID=$client_id CLIENT_SECRET=$client_secret
tokens=(taskset -c 1 "$bin/examples/token_load")
run /dev/null "${tokens[@]}" fetch "http://$ISSUER_ADDR" --tokens "$tmp/tokens" \
  --count "$TOKENS" --connections "$CONNECTIONS" 2>"$tmp/fetch.log" ||
  die "could not get the tokens: $(cat "$tmp/fetch.log")"

# 1. First sight of each token: wrk takes the next unused token for each
# request, so no warm-up (it would spend tokens).
wrk_script "$tmp/first.lua" POST "" "Authorization: Bearer placeholder"
# Each request is formatted before the run: formatting in request() made
# wrk the bottleneck, and an agent waiting on its load generator pays for
# waking it after every response (a quarter of its CPU in `perf`).
cat >>"$tmp/first.lua" <<EOF
local requests, next_request = {}, 1
local base_init = init
function init(args)
  base_init(args)
  for line in io.lines("$tmp/tokens") do
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Authorization"] = "Bearer " .. line
    requests[#requests + 1] = wrk.format(nil, nil, headers)
  end
end
function request()
  local r = requests[next_request]
  if r == nil then
    io.stderr:write("out of tokens: raise TOKENS or lower FIRST_DURATION\n")
    os.exit(2)
  end
  next_request = next_request + 1
  return r
end
EOF
proc0=$(proc_ticks "$agent_pid")
user0=$(proc_ticks "$agent_pid" user)
cpu0=$(cpu0_ticks)
profile_start agent-first-seen "$agent_pid"
run "$tmp/first.out" taskset -c 1 wrk -t1 -c"$CONNECTIONS" --latency -d"${FIRST_DURATION}s" -s "$tmp/first.lua" \
  "http://$AGENT_ADDR/v1/validate" || die "first-seen run failed: $(cat "$tmp/first.out")"
profile_stop
cpu1=$(cpu0_ticks)
proc1=$(proc_ticks "$agent_pid")
user1=$(proc_ticks "$agent_pid" user)
line=$(grep '^BENCH ' "$tmp/first.out") || die "no result line in wrk output: $(cat "$tmp/first.out")"
first_row=$(row agent-first-seen "$(field ok "$line")" "$(field seconds "$line")" "$(field p99_us "$line")" \
  "$proc0" "$proc1" "$cpu0" "$cpu1" "$user0" "$user1")

# 2. Memory with every token remembered and every revocation held.
run /dev/null "${tokens[@]}" validate "http://$AGENT_ADDR" --tokens "$tmp/tokens" \
  --connections "$CONNECTIONS" || die "validating every token failed"
metrics=$(curl -fsS "http://$AGENT_ADDR/metrics")
held() { awk -v m="tokenplane_agent_$1" '$1 == m { print $2 }' <<<"$metrics"; }
rss=$(rss_kib VmRSS)
hwm=$(rss_kib VmHWM)

# 3. A token seen before.
token=$(head -1 "$tmp/tokens")
wrk_script "$tmp/validate.lua" POST "" "Authorization: Bearer $token"
load agent-verified "http://$AGENT_ADDR/v1/validate" "$tmp/validate.lua"
stop "$agent_pid" || true

# 4. Bare hyper, same request.
start_server bare-hyper 0 "http://$BARE_ADDR/v1/validate" "$bin/examples/bare_hyper" "$BARE_ADDR"
load bare-hyper "http://$BARE_ADDR/v1/validate" "$tmp/validate.lua"
stop "$server_pid" || true

# 5. The signature check alone.
taskset -c 0 cargo bench -p tokenplane-sidecar --bench jwt -- "verify/Ed25519 raw" --noplot \
  >"$tmp/criterion.out" 2>&1 || die "criterion failed: $(tail -20 "$tmp/criterion.out")"
# "verify/Ed25519 raw   time:   [low unit median unit high unit]": the median.
raw_us=$(awk '/time:/ { for (i = 1; i <= NF; i++) if ($i == "time:") break
  v = $(i + 3); u = $(i + 4); if (u == "ns") v /= 1000; if (u == "ms") v *= 1000; print v; exit }' \
  "$tmp/criterion.out")
[[ -n $raw_us ]] || die "no time in the criterion output: $(cat "$tmp/criterion.out")"

echo
echo "POST /v1/validate, ${CONNECTIONS} connections"
print_row server validations/s p99_ms cpu_us/request cpu0_server% cpu0_other% cpu0_steal% user_us/request
for r in "$first_row" "${rows[@]}"; do read -ra f <<<"$r"; print_row "${f[@]}"; done
awk -v first="$first_row" -v seen="${rows[0]}" -v bare="${rows[1]}" -v raw="$raw_us" 'BEGIN {
  split(first, f, " "); split(seen, s, " "); split(bare, b, " ")
  printf "verified token: %.1f us CPU (target: at most 15), %.2fx bare hyper\n", s[4], s[4] / b[4]
  printf "first-seen token: %.1f us CPU, raw Ed25519 verify %.1f us: %.2fx (target: at most 1.3x)\n",
    f[4], raw, f[4] / raw
  printf "first-seen token, user space only: %.1f us CPU: %.2fx raw verify (the kernel time above it is mostly\n", f[8], f[8] / raw
  printf "  waking the load generator after each response: see docs/benchmarks.md)\n"
}'
echo "memory: RSS $((rss / 1024)) MiB (peak $((hwm / 1024)) MiB) holding $(held verified_tokens) verified tokens" \
  "and $(held revoked_tokens) revocations (target: under 20 MiB); $((rss_synced / 1024)) MiB after the first resync"
warn_noisy "$first_row" "${rows[@]}"
