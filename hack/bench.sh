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
# sidecar/examples/revoke_load.rs gets $REVOCATIONS tokens and revokes them
# all over 32 connections; the issuer's CPU is measured over the revocations
# only.
#
#   bash hack/bench.sh                 # DURATION=10 seconds per server
#   DURATION=30 REVOCATIONS=50000 bash hack/bench.sh
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
TARGET_DIR=${CARGO_TARGET_DIR:-target}

die() { echo "bench.sh: $*" >&2; exit 1; }

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null
fi
bash hack/install-redis.sh
(( $(nproc) >= 2 )) || die "needs 2 CPUs: the server on CPU 0, wrk on CPU 1"

cargo build --release -p tokenplane-sidecar --bin tokenplane-sidecar \
  --example bare_hyper --example redis_cluster --example revoke_load
bin=$TARGET_DIR/release

creds=config/samples/oauth2client-credentials.yaml
client_id=$(awk '$1 == "client_id:" { print $2 }' "$creds")
client_secret=$(awk '$1 == "client_secret:" { print $2 }' "$creds")
[[ -n $client_id && -n $client_secret ]] || die "no client_id/client_secret in $creds"
basic=$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)

tmp=$(mktemp -d)
pids=()
forget() {
  local rest=() p
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || rest+=("$p"); done
  pids=(${rest[@]+"${rest[@]}"})
}
# stop PID: SIGTERM, wait for it, forget it; returns its exit status.
stop() {
  local status=0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || status=$?
  forget "$1"
  return "$status"
}
# run OUT COMMAND...: runs COMMAND with its stdout in OUT, in the background
# so that ctrl-c or SIGTERM stop the benchmark at once (bash runs traps only
# between foreground commands), and waits for it; returns its exit status.
run() {
  local out=$1 status=0; shift
  "$@" >"$out" &
  local pid=$!
  pids+=("$pid")
  wait "$pid" || status=$?
  forget "$pid"
  return "$status"
}
cleanup() {
  # Last started first: the issuer before the Redis cluster it uses.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    { kill "${pids[i]}"; wait "${pids[i]}"; } 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wrk script: the token request; counts non-200 responses and fails the run
# on any; prints the numbers we need in a parseable form.
cat >"$tmp/token.lua" <<EOF
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $basic"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; last = 0 end
function response(status, headers, body)
  if status ~= 200 then bad = bad + 1; last = status end
end
function done(summary, latency, requests)
  local bad, last = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("bad")
    if t:get("last") ~= 0 then last = t:get("last") end
  end
  local e = summary.errors
  io.write(string.format("BENCH ok=%d non200=%d socket_errors=%d seconds=%.3f p99_us=%d\n",
    summary.requests - bad, bad, e.connect + e.read + e.write + e.timeout,
    summary.duration / 1e6, latency:percentile(99)))
  if bad > 0 then
    io.stderr:write(string.format("%d non-200 responses (last status %d)\n", bad, last))
    os.exit(1)
  end
end
EOF

# CPU time (user + system, all threads) the process has used so far, in ticks.
proc_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }" # fields from 3 (state) on; utime is 14, stime 15
  echo $(( fields[11] + fields[12] ))
}

# "idle steal total" ticks of CPU 0 so far. Steal is time the hypervisor gave
# CPU 0 to other machines; with much steal, or other processes on CPU 0, every
# number here is noisy, p99 above all.
cpu0_ticks() {
  awk '$1 == "cpu0" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $5 + $6, $9, t }' /proc/stat
}

# field NAME LINE: the value of NAME=value in LINE.
field() { sed -E "s/.* $1=([0-9.]+).*/\\1/" <<<"$2"; }

# row NAME OK SECONDS P99_US PROC0 PROC1 CPU0 CPU1: prints
# "NAME per_second p99_ms cpu_us_per_request cpu0_server% cpu0_other% cpu0_steal%".
row() {
  awk -v n="$1" -v ok="$2" -v s="$3" -v p99="$4" -v p0="$5" -v p1="$6" -v c0="$7" -v c1="$8" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN {
      split(c0, a, " "); split(c1, b, " ")
      idle = b[1] - a[1]; steal = b[2] - a[2]; total = b[3] - a[3]; server = p1 - p0
      other = total - idle - steal - server
      printf "%s %.0f %.2f %.1f %.0f %.0f %.1f", n, ok / s, p99 / 1000, server / hz * 1e6 / ok,
        server * 100 / total, (other > 0 ? other : 0) * 100 / total, steal * 100 / total
    }'
}

# start_server NAME ADDR COMMAND...: starts the server on CPU 0 and waits
# until it issues a token; sets server_pid.
server_pid=
start_server() {
  local name=$1 addr=$2; shift 2
  local url="http://$addr/oauth2/token"
  taskset -c 0 "$@" 2>"$tmp/$name.log" &
  server_pid=$!
  pids+=("$server_pid")
  for ((i = 0; ; i++)); do
    kill -0 "$server_pid" 2>/dev/null || die "$name exited: $(cat "$tmp/$name.log")"
    curl -fsS -o /dev/null -u "$client_id:$client_secret" -d grant_type=client_credentials "$url" 2>/dev/null && break
    (( i < 100 )) || die "$name does not answer on $url: $(tail -20 "$tmp/$name.log")"
    sleep 0.1
  done
}

# load NAME ADDR [PID]: wrk against the server started last; appends its row
# to rows. With PID (the Redis master), also appends that process's CPU µs
# per request to notes.
rows=()
notes=()
load() {
  local name=$1 addr=$2 extra=${3:-}
  local url="http://$addr/oauth2/token"
  local wrk=(taskset -c 1 wrk -t1 -c"$CONNECTIONS" --latency -s "$tmp/token.lua")
  run /dev/null "${wrk[@]}" -d"${WARMUP}s" "$url" || die "$name: warm-up failed"
  local proc0 proc1 cpu0 cpu1 out extra0 extra1
  [[ -z $extra ]] || extra0=$(proc_ticks "$extra")
  proc0=$(proc_ticks "$server_pid")
  cpu0=$(cpu0_ticks)
  run "$tmp/$name.wrk" "${wrk[@]}" -d"${DURATION}s" "$url" || die "$name: run failed: $(cat "$tmp/$name.wrk")"
  cpu1=$(cpu0_ticks)
  proc1=$(proc_ticks "$server_pid")
  [[ -z $extra ]] || extra1=$(proc_ticks "$extra")

  local line ok
  out=$(<"$tmp/$name.wrk")
  line=$(grep '^BENCH ' <<<"$out") || die "$name: no result line in wrk output: $out"
  ok=$(field ok "$line")
  (( ok > 0 )) || die "$name: no successful requests"
  (( $(field socket_errors "$line") == 0 )) || echo "bench.sh: $name: $(field socket_errors "$line") socket errors" >&2
  rows+=("$(row "$name" "$ok" "$(field seconds "$line")" "$(field p99_us "$line")" "$proc0" "$proc1" "$cpu0" "$cpu1")")
  [[ -z $extra ]] || notes+=("$(awk -v ok="$ok" -v t=$((extra1 - extra0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", t / hz * 1e6 / ok }')")
}

# In memory.
start_server issuer "$ISSUER_ADDR" \
  "$bin/tokenplane-sidecar" issuer --manifests config/samples --listen "$ISSUER_ADDR"
load issuer "$ISSUER_ADDR"
stop "$server_pid" || true

# On Redis Sentinel, rate limited (never over the limit).
taskset -c 1 "$bin/examples/redis_cluster" "$tmp/redis" >"$tmp/redis.log" 2>&1 &
cluster_pid=$!
pids+=("$cluster_pid")
for ((i = 0; ; i++)); do
  [[ -f $tmp/redis/cluster.env ]] && break
  kill -0 "$cluster_pid" 2>/dev/null || die "the Redis cluster did not start: $(tail -40 "$tmp/redis.log")"
  (( i < 300 )) || die "the Redis cluster is not ready after 30 s: $(tail -40 "$tmp/redis.log")"
  sleep 0.1
done
# shellcheck source=/dev/null
source "$tmp/redis/cluster.env"
mkdir "$tmp/samples"
cp config/samples/*.yaml "$tmp/samples/"
limit='{requestsPerSecond: 1000000, burst: 1000000}'
sed -i "/^spec:\$/a\\  rateLimits: {perClient: $limit, perSourceAddress: $limit}" "$tmp/samples/tokenpolicy.yaml"
grep -q '^  rateLimits: ' "$tmp/samples/tokenpolicy.yaml" || die "could not add rateLimits to the sample TokenPolicy"
start_server issuer-redis "$REDIS_ISSUER_ADDR" \
  "$bin/tokenplane-sidecar" issuer --manifests "$tmp/samples" --listen "$REDIS_ISSUER_ADDR" \
  --redis-sentinels "$REDIS_SENTINELS" --redis-master "$REDIS_MASTER" \
  --redis-username "$REDIS_USERNAME" --redis-password-file "$REDIS_PASSWORD_FILE" \
  --redis-sentinel-username "$REDIS_SENTINEL_USERNAME" \
  --redis-sentinel-password-file "$REDIS_SENTINEL_PASSWORD_FILE"
load issuer-redis "$REDIS_ISSUER_ADDR" "$REDIS_MASTER_PID"

# Revocations: fresh access tokens first, then the measured revocations.
# revoke_load reads the client from the environment (not argv, which ps shows).
export CLIENT_ID=$client_id CLIENT_SECRET=$client_secret
revoke=(taskset -c 1 "$bin/examples/revoke_load")
run /dev/null "${revoke[@]}" fetch "http://$REDIS_ISSUER_ADDR" --tokens "$tmp/tokens" \
  --count "$REVOCATIONS" --connections "$CONNECTIONS" 2>"$tmp/fetch.log" ||
  die "could not get the tokens to revoke: $(cat "$tmp/fetch.log")"
master0=$(proc_ticks "$REDIS_MASTER_PID")
proc0=$(proc_ticks "$server_pid")
cpu0=$(cpu0_ticks)
run "$tmp/revoke.out" "${revoke[@]}" revoke "http://$REDIS_ISSUER_ADDR" --tokens "$tmp/tokens" \
  --connections "$CONNECTIONS" || die "revocations failed: $(cat "$tmp/revoke.out")"
cpu1=$(cpu0_ticks)
proc1=$(proc_ticks "$server_pid")
master1=$(proc_ticks "$REDIS_MASTER_PID")
out=$(<"$tmp/revoke.out")
line=$(grep '^REVOKE ' <<<"$out") || die "no result line from revoke_load: $out"
ok=$(field ok "$line")
revoke_row=$(row issuer-redis "$ok" "$(field seconds "$line")" "$(field p99_us "$line")" "$proc0" "$proc1" "$cpu0" "$cpu1")
notes+=("$(awk -v ok="$ok" -v t=$((master1 - master0)) -v hz="$(getconf CLK_TCK)" \
  'BEGIN { printf "%.1f", t / hz * 1e6 / ok }')")

stop "$server_pid" || true
stop "$cluster_pid" || die "the Redis cluster reported a problem: $(tail -40 "$tmp/redis.log")"

# Bare hyper.
start_server bare-hyper "$BARE_ADDR" "$bin/examples/bare_hyper" "$BARE_ADDR"
load bare-hyper "$BARE_ADDR"
stop "$server_pid" || true

print_row() { printf '%-12s %13s %8s %17s %14s %13s %13s\n' "$@"; }
echo
echo "POST /oauth2/token (client_credentials, Basic auth), ${CONNECTIONS} connections, ${DURATION}s"
print_row server requests/s p99_ms cpu_us/request cpu0_server% cpu0_other% cpu0_steal%
for r in "${rows[@]}"; do read -ra f <<<"$r"; print_row "${f[@]}"; done
awk -v m="${rows[0]}" -v r="${rows[1]}" -v h="${rows[2]}" -v redis="${notes[0]}" 'BEGIN {
  split(m, i, " "); split(r, d, " "); split(h, b, " ")
  printf "issuer/bare: %.2fx CPU per request, %.2fx requests/s\n", i[4] / b[4], i[2] / b[2]
  printf "redis/memory: %.2fx CPU per token (target: at most 1.25x), %.2fx requests/s\n", d[4] / i[4], d[2] / i[2]
  printf "Redis master (CPU 1): %s us CPU per token\n", redis
}'
echo
echo "POST /oauth2/revoke (fresh access tokens, WAIT for 1 replica), ${CONNECTIONS} connections, ${ok} tokens"
print_row server revocations/s p99_ms cpu_us/revocation cpu0_server% cpu0_other% cpu0_steal%
read -ra f <<<"$revoke_row"
print_row "${f[@]}"
echo "Redis master (CPU 1): ${notes[1]} us CPU per revocation"

for r in "${rows[@]}" "${revoke_row/#issuer-redis/issuer-redis(revoke)}"; do
  read -ra f <<<"$r"
  awk -v n="${f[0]}" -v server="${f[4]}" -v other="${f[5]}" -v steal="${f[6]}" 'BEGIN {
    if (steal > 1 || other > 2)
      printf "warning: %s: CPU 0 went %s%% to other processes and %s%% to the hypervisor (steal): " \
        "numbers are noisy, p99 above all\n", n, other, steal
    else if (server < 90)
      printf "warning: %s: the server used only %s%% of CPU 0: CPU 1 (the load generator%s) was the bottleneck\n",
        n, server, (n ~ /redis/ ? ", and Redis" : "")
  }' >&2
done
