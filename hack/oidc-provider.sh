#!/usr/bin/env bash
# hack/bench.sh with node-oidc-provider side by side: installs npm
# `oidc-provider` (8.x) into a temp folder, serves hack/oidc-provider.mjs
# on loopback pinned to CPU 0 (like the issuer), and hands it to bench.sh
# as the other server (OTHER_URL, OTHER_PID, OTHER_CLIENT_ID/SECRET).
# Needs node and npm; arguments and environment pass through to bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

addr=${OIDC_PROVIDER_ADDR:-127.0.0.1:18083}
dir=$(mktemp -d)
node_pid=
trap '[[ -z $node_pid ]] || kill "$node_pid" 2>/dev/null; rm -rf "$dir"' EXIT
npm install --prefix "$dir" --no-save --silent oidc-provider@8 >/dev/null
cp hack/oidc-provider.mjs "$dir/"
secret=$(head -c 32 /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d =)
(cd "$dir" && exec taskset -c 0 node oidc-provider.mjs "$addr" bench.client "$secret") 2>"$dir/node.log" &
node_pid=$!
for ((i = 0; ; i++)); do
  curl -fsS -o /dev/null -u "bench.client:$secret" -d grant_type=client_credentials "http://$addr/token" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null && (( i < 100 )) || { cat "$dir/node.log" >&2; exit 1; }
  sleep 0.1
done
OTHER_NAME=oidc-provider OTHER_URL="http://$addr/token" OTHER_PID=$node_pid \
  OTHER_CLIENT_ID=bench.client OTHER_CLIENT_SECRET=$secret bash hack/bench.sh "$@"
