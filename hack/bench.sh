#!/usr/bin/env bash
# HTTP benchmark of the standalone issuer: client_credentials tokens for the
# sample client (config/samples), against a bare hyper server answering the
# same request with a fixed body of the same size (sidecar/examples/bare_hyper.rs).
#
# Each server runs pinned to CPU 0 and wrk (1 thread, 32 connections) to CPU 1.
# Reported per server: requests/s, p99 latency, and the server's CPU time per
# request (utime+stime from /proc/PID/stat over the run / successful requests);
# then how CPU 0 was shared (server, other processes, hypervisor steal), to
# tell a quiet run from a noisy one. Any non-200 response fails the run.
#
#   bash hack/bench.sh                 # DURATION=10 seconds per server
#   DURATION=30 bash hack/bench.sh
#
# Signing and verification alone: cargo bench -p tokenplane-sidecar --bench jwt
set -euo pipefail

cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
ISSUER_ADDR=${ISSUER_ADDR:-127.0.0.1:18080}
BARE_ADDR=${BARE_ADDR:-127.0.0.1:18081}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

die() { echo "bench.sh: $*" >&2; exit 1; }

if ! command -v wrk >/dev/null; then
  sudo=""
  [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk >/dev/null
fi
(( $(nproc) >= 2 )) || die "needs 2 CPUs: the server on CPU 0, wrk on CPU 1"

cargo build --release -p tokenplane-sidecar --bin tokenplane-sidecar --example bare_hyper

creds=config/samples/oauth2client-credentials.yaml
client_id=$(awk '$1 == "client_id:" { print $2 }' "$creds")
client_secret=$(awk '$1 == "client_secret:" { print $2 }' "$creds")
[[ -n $client_id && -n $client_secret ]] || die "no client_id/client_secret in $creds"
basic=$(printf '%s:%s' "$client_id" "$client_secret" | base64 -w0)

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    { kill "$pid"; wait "$pid"; } 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

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

# bench NAME ADDR COMMAND...: appends to rows
# "NAME req/s p99_ms cpu_us_per_request cpu0_server% cpu0_other% cpu0_steal%".
rows=()
bench() {
  local name=$1 addr=$2; shift 2
  local url="http://$addr/oauth2/token"
  taskset -c 0 "$@" 2>"$tmp/$name.log" &
  local pid=$!
  pids+=("$pid")
  for ((i = 0; ; i++)); do
    kill -0 "$pid" 2>/dev/null || die "$name exited: $(cat "$tmp/$name.log")"
    curl -fsS -o /dev/null -u "$client_id:$client_secret" -d grant_type=client_credentials "$url" 2>/dev/null && break
    (( i < 100 )) || die "$name does not answer on $url: $(cat "$tmp/$name.log")"
    sleep 0.1
  done

  local wrk=(taskset -c 1 wrk -t1 -c"$CONNECTIONS" --latency -s "$tmp/token.lua")
  "${wrk[@]}" -d"${WARMUP}s" "$url" >/dev/null || die "$name: warm-up failed"
  local proc0 proc1 cpu0 cpu1 out
  proc0=$(proc_ticks "$pid")
  cpu0=$(cpu0_ticks)
  out=$("${wrk[@]}" -d"${DURATION}s" "$url") || die "$name: run failed: $out"
  cpu1=$(cpu0_ticks)
  proc1=$(proc_ticks "$pid")

  local line ok seconds p99_us socket_errors
  line=$(grep '^BENCH ' <<<"$out") || die "$name: no result line in wrk output: $out"
  ok=$(sed -E 's/.* ok=([0-9]+).*/\1/' <<<"$line")
  seconds=$(sed -E 's/.* seconds=([0-9.]+).*/\1/' <<<"$line")
  p99_us=$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$line")
  socket_errors=$(sed -E 's/.* socket_errors=([0-9]+).*/\1/' <<<"$line")
  (( ok > 0 )) || die "$name: no successful requests"
  (( socket_errors == 0 )) || echo "bench.sh: $name: $socket_errors socket errors" >&2

  { kill "$pid"; wait "$pid"; } 2>/dev/null || true
  rows+=("$(awk -v n="$name" -v ok="$ok" -v s="$seconds" -v p99="$p99_us" -v hz="$(getconf CLK_TCK)" \
    -v p0="$proc0" -v p1="$proc1" -v c0="$cpu0" -v c1="$cpu1" 'BEGIN {
      split(c0, a, " "); split(c1, b, " ")
      idle = b[1] - a[1]; steal = b[2] - a[2]; total = b[3] - a[3]; server = p1 - p0
      other = total - idle - steal - server
      printf "%s %.0f %.2f %.1f %.0f %.0f %.1f", n, ok / s, p99 / 1000, server / hz * 1e6 / ok,
        server * 100 / total, (other > 0 ? other : 0) * 100 / total, steal * 100 / total
    }')")
}

bench issuer "$ISSUER_ADDR" \
  "$TARGET_DIR/release/tokenplane-sidecar" issuer --manifests config/samples --listen "$ISSUER_ADDR"
bench bare-hyper "$BARE_ADDR" "$TARGET_DIR/release/examples/bare_hyper" "$BARE_ADDR"

echo
echo "POST /oauth2/token (client_credentials, Basic auth), ${CONNECTIONS} connections, ${DURATION}s"
print_row() { printf '%-12s %12s %8s %16s %14s %13s %13s\n' "$@"; }
print_row server requests/s p99_ms cpu_us/request cpu0_server% cpu0_other% cpu0_steal%
for row in "${rows[@]}"; do read -ra fields <<<"$row"; print_row "${fields[@]}"; done
awk -v a="${rows[0]}" -v b="${rows[1]}" 'BEGIN {
  split(a, i, " "); split(b, h, " ")
  printf "issuer/bare: %.2fx CPU per request, %.2fx requests/s\n", i[4] / h[4], i[2] / h[2]
}'
for row in "${rows[@]}"; do
  read -ra f <<<"$row"
  awk -v n="${f[0]}" -v server="${f[4]}" -v other="${f[5]}" -v steal="${f[6]}" 'BEGIN {
    if (steal > 1 || other > 2)
      printf "warning: %s: CPU 0 went %s%% to other processes and %s%% to the hypervisor (steal): " \
        "numbers are noisy, p99 above all\n", n, other, steal
    else if (server < 90)
      printf "warning: %s: the server used only %s%% of CPU 0: the load generator (CPU 1) was the bottleneck\n",
        n, server
  }' >&2
done
