# Shared by hack/bench.sh and hack/bench-agent.sh: process bookkeeping, CPU
# accounting from /proc, wrk scripts, the Redis cluster. Sourced, not run;
# the caller sets BENCH (its name, for messages) and CONNECTIONS, WARMUP and
# DURATION first.

TARGET_DIR=${CARGO_TARGET_DIR:-target}
bin=$TARGET_DIR/release

die() { echo "$BENCH: $*" >&2; exit 1; }

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  as_root apt-get update -qq && as_root apt-get install -y -qq wrk >/dev/null
fi
bash hack/install-redis.sh
(( $(nproc) >= 2 )) || die "needs 2 CPUs: the server on CPU 0, the load generator on CPU 1"

creds=config/samples/oauth2client-credentials.yaml
client_id=$(awk '$1 == "client_id:" { print $2 }' "$creds")
client_secret=$(awk '$1 == "client_secret:" { print $2 }' "$creds")
[[ -n $client_id && -n $client_secret ]] || die "no client_id/client_secret in $creds"

tmp=$(mktemp -d)

# samples_with_keys DIR: config/samples plus a fresh signing-keys Secret, as
# an issuer on Redis needs (docs/standalone.md, "Signing keys").
samples_with_keys() {
  mkdir -p "$1"
  cp config/samples/*.yaml "$1/"
  openssl genpkey -algorithm ed25519 -out "$tmp/key-1.pem" 2>/dev/null || die "openssl cannot make an Ed25519 key"
  {
    printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: default-signing-keys}\nstringData:\n'
    printf '  active: key-1\n  key-1.pem: |\n'
    sed 's/^/    /' "$tmp/key-1.pem"
  } >"$1/signing-keys.yaml"
  rm "$tmp/key-1.pem"
}

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

# PERF_DIR=DIR: `perf record -g` of the measured server during each
# measured run, to DIR/<name>.data (perf pinned to CPU 1; it perturbs the
# numbers of that run, so profile and measure in separate runs).
profile_start() {
  [[ -n ${PERF_DIR:-} ]] || return 0
  mkdir -p "$PERF_DIR"
  taskset -c 1 perf record -q -F 2999 -g -p "$2" -o "$PERF_DIR/$1.data" 2>/dev/null &
  perf_pid=$!
}
profile_stop() {
  [[ -n ${PERF_DIR:-} ]] || return 0
  kill -INT "$perf_pid" && wait "$perf_pid" || true
}

# CPU time the process has used so far (all threads), in ticks: user +
# system, or with `user` user space only.
proc_ticks() {
  local stat fields
  stat=$(<"/proc/$1/stat")
  read -ra fields <<<"${stat##*) }" # fields from 3 (state) on; utime is 14, stime 15
  if [[ ${2:-} == user ]]; then echo "${fields[11]}"; else echo $(( fields[11] + fields[12] )); fi
}

# "idle steal total" ticks of CPU 0 so far. Steal is time the hypervisor gave
# CPU 0 to other machines; with much steal, or other processes on CPU 0, every
# number here is noisy, p99 above all.
cpu0_ticks() {
  awk '$1 == "cpu0" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $5 + $6, $9, t }' /proc/stat
}

# field NAME LINE: the value of NAME=value in LINE.
field() { sed -E "s/.* $1=([0-9.]+).*/\\1/" <<<"$2"; }

# row NAME OK SECONDS P99_US PROC0 PROC1 CPU0 CPU1 USER0 USER1: prints
# "NAME per_second p99_ms cpu_us_per_request cpu0_server% cpu0_other%
# cpu0_steal% user_us_per_request" (user space only: the kernel's share
# includes waking the load generator, which grows when it idles).
row() {
  awk -v n="$1" -v ok="$2" -v s="$3" -v p99="$4" -v p0="$5" -v p1="$6" -v c0="$7" -v c1="$8" \
    -v u0="$9" -v u1="${10}" -v hz="$(getconf CLK_TCK)" 'BEGIN {
      split(c0, a, " "); split(c1, b, " ")
      idle = b[1] - a[1]; steal = b[2] - a[2]; total = b[3] - a[3]; server = p1 - p0
      other = total - idle - steal - server
      printf "%s %.0f %.2f %.1f %.0f %.0f %.1f %.1f", n, ok / s, p99 / 1000, server / hz * 1e6 / ok,
        server * 100 / total, (other > 0 ? other : 0) * 100 / total, steal * 100 / total,
        (u1 - u0) / hz * 1e6 / ok
    }'
}

# wrk_script FILE METHOD BODY HEADER...: a wrk script sending one request
# (headers as "Name: value"); counts non-200 responses and fails the run on
# any; prints the numbers we need in a parseable form.
wrk_script() {
  local file=$1 method=$2 body=$3 header; shift 3
  {
    echo "wrk.method = \"$method\""
    echo "wrk.body = \"$body\""
    for header in "$@"; do echo "wrk.headers[\"${header%%: *}\"] = \"${header#*: }\""; done
    cat <<'LUA'
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
LUA
  } >"$file"
}

# start_server NAME CPU URL COMMAND...: starts the server on CPU and waits
# until `curl URL` (with CURL_ARGS) succeeds; sets server_pid.
server_pid=
CURL_ARGS=()
start_server() {
  local name=$1 cpu=$2 url=$3; shift 3
  taskset -c "$cpu" "$@" 2>"$tmp/$name.log" &
  server_pid=$!
  pids+=("$server_pid")
  for ((i = 0; ; i++)); do
    kill -0 "$server_pid" 2>/dev/null || die "$name exited: $(cat "$tmp/$name.log")"
    curl -fsS -o /dev/null "${CURL_ARGS[@]}" "$url" 2>/dev/null && break
    (( i < 100 )) || die "$name does not answer on $url: $(tail -20 "$tmp/$name.log")"
    sleep 0.1
  done
}

# load NAME URL SCRIPT [PID]: wrk with SCRIPT against the server started
# last; appends its row to rows. With PID (the Redis master), also appends
# that process's CPU µs per request to notes.
rows=()
notes=()
load() {
  local name=$1 url=$2 script=$3 extra=${4:-}
  local wrk=(taskset -c 1 wrk -t1 -c"$CONNECTIONS" --latency -s "$script")
  run /dev/null "${wrk[@]}" -d"${WARMUP}s" "$url" || die "$name: warm-up failed"
  local proc0 proc1 user0 user1 cpu0 cpu1 out extra0 extra1
  [[ -z $extra ]] || extra0=$(proc_ticks "$extra")
  proc0=$(proc_ticks "$server_pid")
  user0=$(proc_ticks "$server_pid" user)
  cpu0=$(cpu0_ticks)
  profile_start "$name" "$server_pid"
  run "$tmp/$name.wrk" "${wrk[@]}" -d"${DURATION}s" "$url" || die "$name: run failed: $(cat "$tmp/$name.wrk")"
  profile_stop
  cpu1=$(cpu0_ticks)
  proc1=$(proc_ticks "$server_pid")
  user1=$(proc_ticks "$server_pid" user)
  [[ -z $extra ]] || extra1=$(proc_ticks "$extra")

  local line ok
  out=$(<"$tmp/$name.wrk")
  line=$(grep '^BENCH ' <<<"$out") || die "$name: no result line in wrk output: $out"
  ok=$(field ok "$line")
  (( ok > 0 )) || die "$name: no successful requests"
  (( $(field socket_errors "$line") == 0 )) || echo "bench.sh: $name: $(field socket_errors "$line") socket errors" >&2
  rows+=("$(row "$name" "$ok" "$(field seconds "$line")" "$(field p99_us "$line")" "$proc0" "$proc1" "$cpu0" "$cpu1" \
    "$user0" "$user1")")
  [[ -z $extra ]] || notes+=("$(awk -v ok="$ok" -v t=$((extra1 - extra0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", t / hz * 1e6 / ok }')")
}

# start_cluster: the Redis cluster (sidecar/examples/redis_cluster.rs) on
# CPU 1; sources its cluster.env and sets cluster_pid.
start_cluster() {
  taskset -c 1 "$bin/examples/redis_cluster" "$tmp/redis" >"$tmp/redis.log" 2>&1 &
  cluster_pid=$!
  pids+=("$cluster_pid")
  for ((i = 0; ; i++)); do
    [[ -f $tmp/redis/cluster.env ]] && break
    kill -0 "$cluster_pid" 2>/dev/null || die "the Redis cluster did not start: $(tail -40 "$tmp/redis.log")"
    (( i < 600 )) || die "the Redis cluster is not ready after 60 s: $(tail -40 "$tmp/redis.log")"
    sleep 0.1
  done
  # shellcheck source=/dev/null
  source "$tmp/redis/cluster.env"
}

# measure NAME PID OUT COMMAND...: runs COMMAND (token_load, printing a
# RESULT line) and prints the row of PID's CPU per successful request.
measure() {
  local name=$1 pid=$2 out=$3; shift 3
  local proc0 proc1 user0 user1 cpu0 cpu1 line
  proc0=$(proc_ticks "$pid")
  user0=$(proc_ticks "$pid" user)
  cpu0=$(cpu0_ticks)
  run "$out" "$@" || die "$name failed: $(cat "$out")"
  cpu1=$(cpu0_ticks)
  proc1=$(proc_ticks "$pid")
  user1=$(proc_ticks "$pid" user)
  line=$(grep '^RESULT ' "$out") || die "$name: no result line: $(cat "$out")"
  row "$name" "$(field ok "$line")" "$(field seconds "$line")" "$(field p99_us "$line")" "$proc0" "$proc1" "$cpu0" "$cpu1" \
    "$user0" "$user1"
}

print_row() { printf '%-22s %13s %8s %17s %14s %13s %13s %17s\n' "$@"; }

# warn_noisy ROW...: a warning for each row whose CPU 0 was shared or idle.
warn_noisy() {
  local r f
  for r in "$@"; do
    read -ra f <<<"$r"
    awk -v n="${f[0]}" -v server="${f[4]}" -v other="${f[5]}" -v steal="${f[6]}" 'BEGIN {
      if (steal > 1 || other > 2)
        printf "warning: %s: CPU 0 went %s%% to other processes and %s%% to the hypervisor (steal): " \
          "numbers are noisy, p99 above all\n", n, other, steal
      else if (server < 90)
        printf "warning: %s: the server used only %s%% of CPU 0: CPU 1 (the load generator, and Redis) was the bottleneck\n",
          n, server
    }' >&2
  done
}
