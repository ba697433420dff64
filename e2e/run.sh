#!/usr/bin/env bash
# End-to-end suite on kind: builds the images, brings up a cluster with a
# Redis Sentinel set (e2e/redis.yaml) and the operator (config/manager), then
# runs the scenarios below, each printing PASS or FAIL. Exits non-zero when
# one fails. See e2e/README.md.
#
#   bash e2e/run.sh                  everything, cluster deleted at the end
#   KEEP=1 bash e2e/run.sh           keep the cluster (reused by the next run)
#   SKIP_BUILD=1 bash e2e/run.sh     use images already built with these tags
#   SCENARIOS="a c f" bash e2e/run.sh   some scenarios (a always runs first)
#
# Environment: CLUSTER (tokenplane-e2e), TAG (e2e), OPERATOR_IMAGE,
# SIDECAR_IMAGE, CURL_IMAGE, KIND_NODE_IMAGE, ARTIFACTS (a temp dir: logs
# and object dumps when something fails).
#
# Portable to macOS (bash 3.2, BSD tools): no associative arrays, no GNU-only
# flags, no jq.
#
# `check && check || fail` is used on purpose: fail when either check fails.
# shellcheck disable=SC2015
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${CLUSTER:-tokenplane-e2e}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
TAG=${TAG:-e2e}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/tokenplane/tokenplane-operator:$TAG}
SIDECAR_IMAGE=${SIDECAR_IMAGE:-ghcr.io/tokenplane/tokenplane-sidecar:$TAG}
CURL_IMAGE=${CURL_IMAGE:-curlimages/curl:8.11.1}
REDIS_IMAGE=redis:7.4 # as in e2e/redis.yaml; also the NetworkPolicy canary
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
SCENARIOS=${SCENARIOS:-a b c d e f g}
ARTIFACTS=${ARTIFACTS:-$(mktemp -d "${TMPDIR:-/tmp}/tokenplane-e2e.XXXXXX")}
mkdir -p "$ARTIFACTS"

NS=default                 # the TokenPolicy, its clients and the test pods
OP_NS=tokenplane-system    # the operator and its Lease
REDIS_NS=redis             # e2e/redis.yaml
ISSUER=https://default-issuer.$NS.svc # the issuer URL of TokenPolicy default
CA_DIR=/var/run/tokenplane/issuer-ca  # where pods mount a client's issuer CA bundle
SENTINELS=redis-sentinel.$REDIS_NS.svc:26379
AUDIENCE=https://orders.example.com  # the sample client's audience
ISSUER_PODS=app.kubernetes.io/name=tokenplane-issuer,app.kubernetes.io/instance=default

RUN_START=$(date +%s)
CLUSTER_UP=0
FAILED=0
PASSED=" "
SUMMARY=$ARTIFACTS/summary.txt
: > "$SUMMARY"

# ---------------------------------------------------------------- output

log() { printf '\n[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    WARN: %s\n' "$*"; }
# Ends the current scenario (a subshell) or, during setup, the run.
fail() {
  printf '    FAIL: %s\n' "$*" >&2
  exit 1
}

# Milliseconds since the epoch (whole seconds where date has no %N).
now_ms() {
  local t
  t=$(date +%s%3N 2>/dev/null || true)
  case $t in
    '' | *[!0-9]*) t="$(date +%s)000" ;;
  esac
  printf '%s\n' "$t"
}

# Time since START_MS, as 1.234s.
since() {
  local ms=$(($(now_ms) - $1))
  printf '%d.%03ds\n' $((ms / 1000)) $((ms % 1000))
}

timing() { printf '%-8s %-62s %s\n' "$1" "$2" "$3" >> "$SUMMARY"; }

# ---------------------------------------------------------------- helpers

k() { kubectl --context "kind-$CLUSTER" "$@"; }

exists() { k "$@" > /dev/null 2>&1; }
absent() { ! k "$@" > /dev/null 2>&1; }

# wait_for SECONDS WHAT CMD...: runs CMD every POLL_INTERVAL seconds (1)
# until it succeeds; sets WAITED to the time it took.
wait_for() {
  local timeout=$1 what=$2 start
  shift 2
  start=$(now_ms)
  until "$@"; do
    if [ $(($(now_ms) - start)) -gt $((timeout * 1000)) ]; then
      fail "timed out after ${timeout}s waiting for: $what"
    fi
    sleep "${POLL_INTERVAL:-1}"
  done
  WAITED=$(since "$start")
}

# A key of a Secret, decoded; empty when missing.
secret_field() {
  k -n "$1" get secret "$2" -o go-template="{{ index .data \"$3\" | base64decode }}" 2> /dev/null || true
}

# The status and conditions of an object, for failure messages.
status_of() {
  k -n "$NS" get "$@" -o go-template='{{ range .status.conditions }}{{ .type }}={{ .status }} ({{ .reason }}: {{ .message }}) {{ end }}' 2>&1 || true
}

# request POD CONTAINER CURL_ARGS...: curl inside the pod. Sets BODY and
# STATUS (000 when nothing answered).
request() {
  local pod=$1 container=$2 out
  shift 2
  out=$(k exec "$pod" -c "$container" -- curl -sS -m 10 --cacert "$CA_DIR/ca.crt" -w '\n%{http_code}' "$@" 2> /dev/null || true)
  STATUS=${out##*$'\n'}
  BODY=${out%$'\n'*}
  if [ "$BODY" = "$out" ]; then BODY=''; fi
  if [ -z "$STATUS" ]; then STATUS=000; fi
}

# The first string value of FIELD in the JSON on stdin (flat enough for
# the answers here; no jq needed).
json_str() {
  sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' | head -n 1
}

b64url_decode() {
  local s
  s=$(printf '%s' "$1" | tr '_-' '/+')
  case $((${#s} % 4)) in
    2) s="$s==" ;;
    3) s="$s=" ;;
  esac
  printf '%s' "$s" | base64 -d 2> /dev/null || printf '%s' "$s" | base64 -D
}

# The kid in a JWT's header.
jwt_kid() { b64url_decode "${1%%.*}" | json_str kid; }

# reach POD URL: "blocked" when no TCP connection could be made (refused or
# timed out: what a NetworkPolicy does), else "open".
reach() {
  local rc=0
  k exec "$1" -c curl -- curl -s -o /dev/null -m 3 "$2" > /dev/null 2>&1 || rc=$?
  case $rc in
    7 | 28) echo blocked ;;
    *) echo open ;;
  esac
}

# client_token POD CONTAINER CLIENT_ID CLIENT_SECRET: client_credentials at
# the issuer's Service. Sets STATUS, BODY and TOKEN.
client_token() {
  request "$1" "$2" -u "$3:$4" -d grant_type=client_credentials "$ISSUER/oauth2/token"
  TOKEN=$(printf '%s' "$BODY" | json_str access_token)
}

got_token() {
  client_token "$@"
  [ "$STATUS" = 200 ] && [ -n "$TOKEN" ]
}

# agent_validate AGENT_POD TOKEN: POST /v1/validate on the agent, from the
# pod's curl container (the agent listens on loopback). Sets STATUS, BODY,
# REASON.
agent_validate() {
  request "$1" curl -X POST -H "Authorization: Bearer $2" http://127.0.0.1:8081/v1/validate
  REASON=$(printf '%s' "$BODY" | json_str reason)
}

accepted() {
  agent_validate "$1" "$2"
  [ "$STATUS" = 200 ] && printf '%s' "$BODY" | grep -q '"active":[[:space:]]*true'
}

rejected() {
  agent_validate "$1" "$2"
  [ "$STATUS" != 200 ] && [ "$STATUS" != 000 ]
}

# rejected_as AGENT TOKEN REASON
rejected_as() {
  agent_validate "$1" "$2"
  [ "$STATUS" = 401 ] && [ "$REASON" = "$3" ]
}

# Reads a client's credentials Secret into CLIENT_ID and CLIENT_SECRET.
creds() {
  CLIENT_ID=$(secret_field "$NS" "$1-oauth2-credentials" client_id)
  CLIENT_SECRET=$(secret_field "$NS" "$1-oauth2-credentials" client_secret)
  [ -n "$CLIENT_ID" ] && [ -n "$CLIENT_SECRET" ] || fail "no credentials in Secret $NS/$1-oauth2-credentials"
}

# apply_client NAME [WORKLOAD_SELECTOR]: a confidential client_credentials
# client of TokenPolicy default for the sample's audience.
apply_client() {
  local selector=''
  if [ -n "${2:-}" ]; then selector="  workloadSelector: $2"; fi
  k apply -f - << EOF
apiVersion: tokenplane.io/v1alpha1
kind: OAuth2Client
metadata:
  name: $1
  namespace: $NS
spec:
  grantTypes: [client_credentials]
  tokenEndpointAuthMethod: client_secret_basic
  scopes: [orders.read]
  audiences: [$AUDIENCE]
  policyRef:
    name: default
$selector
EOF
}

# check_credentials NAME: the client's status and credentials Secret.
check_credentials() {
  local id secret user password
  id=$(secret_field "$NS" "$1-oauth2-credentials" client_id)
  secret=$(secret_field "$NS" "$1-oauth2-credentials" client_secret)
  user=$(secret_field "$NS" "$1-oauth2-credentials" redis_username)
  password=$(secret_field "$NS" "$1-oauth2-credentials" redis_password)
  [ "$id" = "$1.$NS" ] || fail "Secret $1-oauth2-credentials: client_id is '$id', not $1.$NS"
  [ ${#secret} -ge 43 ] || fail "Secret $1-oauth2-credentials: no 256-bit client_secret"
  [ "$user" = "agent:$1.$NS" ] || fail "Secret $1-oauth2-credentials: redis_username is '$user', not agent:$1.$NS"
  [ ${#password} -ge 43 ] || fail "Secret $1-oauth2-credentials: no 256-bit redis_password"
  [ "$(k -n "$NS" get oauth2client "$1" -o jsonpath='{.status.clientId}')" = "$1.$NS" ] ||
    fail "OAuth2Client $1: status.clientId is not $1.$NS"
  [ "$(k -n "$NS" get oauth2client "$1" -o jsonpath='{.status.credentialsSecret}')" = "$1-oauth2-credentials" ] ||
    fail "OAuth2Client $1: status.credentialsSecret is not $1-oauth2-credentials"
  info "OAuth2Client $1: client id $id, credentials Secret complete"
}

# The pods' restricted security context (the default namespace enforces
# nothing, but the suite runs as production workloads would).
POD_SECURITY='{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {type: RuntimeDefault}}'
CONTAINER_SECURITY='{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}'

# ensure_curl_pod NAME LABELS: a pod with curl, for requests from a
# workload's network identity (its labels).
ensure_curl_pod() {
  if ! exists -n "$NS" get pod "$1"; then
    k apply -f - << EOF > /dev/null
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  labels: $2
spec:
  terminationGracePeriodSeconds: 1
  securityContext: $POD_SECURITY
  containers:
    - name: curl
      image: $CURL_IMAGE
      command: [sleep, "86400"]
      securityContext: $CONTAINER_SECURITY
      volumeMounts: [{name: issuer-ca, mountPath: $CA_DIR, readOnly: true}]
  volumes:
    - name: issuer-ca
      configMap: {name: demo-oauth2-credentials-issuer-ca, optional: true}
EOF
  fi
  k -n "$NS" wait --for=condition=Ready "pod/$1" --timeout=120s > /dev/null
}

agent_ready() {
  request "$1" curl http://127.0.0.1:8081/readyz
  [ "$STATUS" = 200 ]
}

# ensure_agent NAME CLIENT: a workload pod with the agent (the sidecar
# image, as injection would add it) and a curl container standing for the
# app, which talks to the agent on loopback. Labelled app=demo, so the
# issuer's NetworkPolicy admits it (the clients here select app=demo).
ensure_agent() {
  if ! exists -n "$NS" get pod "$1"; then
    k apply -f - << EOF > /dev/null
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  labels: {app: demo, tokenplane-e2e: agent, tokenplane-e2e/client: $2}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: $POD_SECURITY
  containers:
    - name: agent
      image: $SIDECAR_IMAGE
      imagePullPolicy: Never
      args:
        - agent
        - --issuer=$ISSUER
        - --issuer-ca-file=$CA_DIR/ca.crt
        - --credentials-dir=/var/run/tokenplane/credentials
        - --audience=$AUDIENCE
        - --redis-sentinels=$SENTINELS
        - --redis-master=tokenplane
      securityContext: $CONTAINER_SECURITY
      volumeMounts:
        - name: credentials
          mountPath: /var/run/tokenplane/credentials
          readOnly: true
        - {name: issuer-ca, mountPath: $CA_DIR, readOnly: true}
    - name: curl
      image: $CURL_IMAGE
      command: [sleep, "86400"]
      securityContext: $CONTAINER_SECURITY
      volumeMounts: [{name: issuer-ca, mountPath: $CA_DIR, readOnly: true}]
  volumes:
    - name: credentials
      secret:
        secretName: $2-oauth2-credentials
        defaultMode: 0440
    - name: issuer-ca
      configMap: {name: $2-oauth2-credentials-issuer-ca}
EOF
  fi
  k -n "$NS" wait --for=condition=Ready "pod/$1" --timeout=120s > /dev/null
  wait_for 60 "agent $1 ready (JWKS loaded, revocation feed in sync)" agent_ready "$1"
  info "agent $1 (client $2.$NS) ready; /readyz green after $WAITED"
}

# Whether this cluster enforces NetworkPolicies, found once with a canary:
# a pod behind a deny-all policy, probed from a pod no policy admits.
# (kind >= 0.24 enforces them through kindnet; older kind, and other
# CNIs such as flannel, do not.)
netpol_enforced() {
  local cache=$ARTIFACTS/netpol-enforced ip result=no
  if [ ! -s "$cache" ]; then
    ensure_curl_pod e2e-outsider '{tokenplane-e2e: outsider}'
    k apply -f - << EOF > /dev/null
apiVersion: v1
kind: Pod
metadata:
  name: e2e-canary
  namespace: $NS
  labels: {tokenplane-e2e: canary}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsNonRoot: true, runAsUser: 999, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: redis
      image: $REDIS_IMAGE
      command: [redis-server, --port, "6379", --protected-mode, "no", --save, ""]
      securityContext: $CONTAINER_SECURITY
      readinessProbe:
        exec: {command: [redis-cli, ping]}
        periodSeconds: 1
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: e2e-canary-deny
  namespace: $NS
spec:
  podSelector: {matchLabels: {tokenplane-e2e: canary}}
  policyTypes: [Ingress]
EOF
    k -n "$NS" wait --for=condition=Ready pod/e2e-canary --timeout=120s > /dev/null
    ip=$(k -n "$NS" get pod e2e-canary -o jsonpath='{.status.podIP}')
    for _ in 1 2 3 4 5; do
      if [ "$(reach e2e-outsider "http://$ip:6379/")" = blocked ]; then
        result=yes
        break
      fi
      sleep 2
    done
    k -n "$NS" delete pod/e2e-canary networkpolicy/e2e-canary-deny --wait=false > /dev/null
    echo "$result" > "$cache"
    if [ "$result" = yes ]; then
      info "this cluster enforces NetworkPolicies (a deny-all canary was unreachable)"
    else
      info "this cluster does NOT enforce NetworkPolicies (a deny-all canary was reachable): denials are not asserted"
    fi
  fi
  [ "$(cat "$cache")" = yes ]
}

active_kid() { k -n "$NS" get tokenpolicy default -o jsonpath='{.status.activeKeyId}'; }

lease_holder() {
  k -n "$OP_NS" get lease tokenplane-operator -o jsonpath='{.spec.holderIdentity}' 2> /dev/null || true
}

# The Lease is held by a live operator pod other than $1 (if given).
lease_held_by_another() {
  HOLDER=$(lease_holder)
  [ -n "$HOLDER" ] && [ "$HOLDER" != "${1:-}" ] &&
    [ "$(k -n "$OP_NS" get pod "$HOLDER" -o jsonpath='{.metadata.deletionTimestamp}' 2> /dev/null || echo gone)" = "" ]
}

# The Redis data nodes (the master and replicas Sentinel knows).
redis_cli() {
  # shellcheck disable=SC2016 # expanded by the pod's shell
  k -n "$REDIS_NS" exec "$1" -c redis -- sh -c \
    'redis-cli --no-auth-warning --user operator --pass "$OPERATOR_PASSWORD" "$@"' redis-cli "${@:2}"
}

# No data node knows the ACL user $1.
no_redis_user() {
  local pod out
  for pod in redis-0 redis-1 redis-2; do
    out=$(redis_cli "$pod" ACL GETUSER "$1") || return 1
    [ -z "$(printf '%s' "$out" | tr -d '[:space:]')" ] || return 1
  done
}

# collect_diagnostics DIR: what is needed to see why something failed.
collect_diagnostics() {
  local dir=$1
  mkdir -p "$dir"
  k get nodes,pods,deployments,statefulsets,services,networkpolicies,horizontalpodautoscalers,leases -A -o wide > "$dir/objects.txt" 2>&1 || true
  k get oauth2clients,tokenpolicies -A -o yaml > "$dir/resources.yaml" 2>&1 || true
  k get events -A --sort-by=.lastTimestamp > "$dir/events.txt" 2>&1 || true
  k -n "$NS" describe pods > "$dir/pods-$NS.txt" 2>&1 || true
  k -n "$OP_NS" describe pods > "$dir/pods-$OP_NS.txt" 2>&1 || true
  k -n "$OP_NS" logs -l app.kubernetes.io/name=tokenplane-operator --all-containers --prefix --tail=-1 --max-log-requests=10 > "$dir/operator.log" 2>&1 || true
  k -n "$NS" logs -l "$ISSUER_PODS" --prefix --tail=-1 --max-log-requests=10 > "$dir/issuer.log" 2>&1 || true
  k -n "$NS" logs -l tokenplane-e2e=agent -c agent --prefix --tail=-1 --max-log-requests=10 > "$dir/agents.log" 2>&1 || true
  k -n "$REDIS_NS" logs -l app.kubernetes.io/name=redis --all-containers --prefix --tail=-1 --max-log-requests=10 > "$dir/redis.log" 2>&1 || true
  echo "    diagnostics: $dir"
  echo "    last lines of the operator's log:"
  tail -n 15 "$dir/operator.log" 2> /dev/null | sed 's/^/      /' || true
}

# ---------------------------------------------------------------- setup

# phase NAME CMD...: a setup step, timed; a failure ends the run.
phase() {
  local name=$1 start
  shift
  log "$name"
  start=$(now_ms)
  "$@"
  info "done in $(since "$start")"
  timing setup "$name" "$(since "$start")"
}

check_prerequisites() {
  local tool version major minor
  for tool in docker kind kubectl; do
    command -v "$tool" > /dev/null || fail "$tool is not installed (see e2e/README.md)"
  done
  docker info > /dev/null 2>&1 || fail "the Docker daemon is not reachable (docker info failed)"
  version=$(kind version)
  major=$(printf '%s' "$version" | sed -n 's/^kind v\([0-9]*\)\.\([0-9]*\).*/\1/p')
  minor=$(printf '%s' "$version" | sed -n 's/^kind v\([0-9]*\)\.\([0-9]*\).*/\2/p')
  if [ -n "$major" ] && [ "$major" -eq 0 ] && [ "${minor:-0}" -lt 20 ]; then
    fail "$version is too old: kind 0.20 or newer is needed"
  fi
  info "$version; $(kubectl version --client 2> /dev/null | head -n 1)"
  info "images: $OPERATOR_IMAGE, $SIDECAR_IMAGE; artifacts: $ARTIFACTS"
}

create_cluster() {
  if kind get clusters 2> /dev/null | grep -x "$CLUSTER" > /dev/null; then
    info "reusing the kind cluster $CLUSTER"
    REUSED=1
  else
    REUSED=0
    # shellcheck disable=SC2086 # the --image pair is meant to split
    kind create cluster --name "$CLUSTER" --wait 120s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
  fi
  CLUSTER_UP=1
  k wait --for=condition=Ready nodes --all --timeout=120s > /dev/null
  info "Kubernetes $(k get nodes -o jsonpath='{.items[0].status.nodeInfo.kubeletVersion}')"
}

build_images() {
  if [ "$SKIP_BUILD" = 1 ]; then
    info "SKIP_BUILD=1: using the images already tagged"
    return
  fi
  DOCKER_BUILDKIT=1 docker build --target operator -t "$OPERATOR_IMAGE" "$REPO"
  DOCKER_BUILDKIT=1 docker build --target sidecar -t "$SIDECAR_IMAGE" "$REPO"
}

load_image() {
  if ! kind load docker-image --name "$CLUSTER" "$1"; then
    # Docker's containerd image store trips some kind versions up.
    info "kind load docker-image failed; loading through an archive"
    docker save -o "$ARTIFACTS/image.tar" "$1"
    kind load image-archive --name "$CLUSTER" "$ARTIFACTS/image.tar"
    rm -f "$ARTIFACTS/image.tar"
  fi
}

load_images() {
  load_image "$OPERATOR_IMAGE"
  load_image "$SIDECAR_IMAGE"
}

random_password() {
  if command -v openssl > /dev/null; then
    openssl rand -hex 32
  else
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
  fi
}

sentinel_field() {
  k -n "$REDIS_NS" exec redis-0 -c sentinel -- redis-cli -p 26379 SENTINEL MASTER tokenplane 2> /dev/null |
    awk -v want="$1" 'prev == want { print; exit } { prev = $0 }'
}

# Sentinel sees the master, both replicas and the other two Sentinels.
sentinels_settled() {
  [ "$(sentinel_field num-slaves)" = 2 ] && [ "$(sentinel_field num-other-sentinels)" = 2 ] &&
    [ "$(sentinel_field flags)" = master ]
}

deploy_redis() {
  k create namespace "$REDIS_NS" --dry-run=client -o yaml | k apply -f - > /dev/null
  if absent -n "$REDIS_NS" get secret redis-passwords; then
    k -n "$REDIS_NS" create secret generic redis-passwords \
      --from-literal=operator="$(random_password)" \
      --from-literal=replication="$(random_password)" \
      --from-literal=sentinel="$(random_password)" > /dev/null
    info "generated the Redis passwords (Secret $REDIS_NS/redis-passwords)"
  fi
  k apply -f "$REPO/e2e/redis.yaml"
  k -n "$REDIS_NS" rollout status statefulset/redis --timeout=300s
  wait_for 120 "the Sentinels to agree on a master with 2 replicas" sentinels_settled
  info "master $(k -n "$REDIS_NS" exec redis-0 -c sentinel -- redis-cli -p 26379 SENTINEL get-master-addr-by-name tokenplane | head -n 1), 2 replicas, 3 Sentinels (settled after $WAITED)"
}

deploy_operator() {
  local overlay rc=0
  k create namespace "$OP_NS" --dry-run=client -o yaml | k apply -f - > /dev/null
  k -n "$OP_NS" create secret generic tokenplane-operator-redis \
    --from-literal=password="$(secret_field "$REDIS_NS" redis-passwords operator)" \
    --dry-run=client -o yaml | k apply -f - > /dev/null
  # config/manager with the test images: the operator's own, and the one it
  # gives the issuer Deployments (--issuer-image=$(ISSUER_IMAGE)). Kustomize
  # takes only relative paths: the overlay lives in e2e/ while it is applied.
  overlay=$REPO/e2e/.overlay-$$
  mkdir -p "$overlay"
  cat > "$overlay/kustomization.yaml" << EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../config/manager
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: tokenplane-operator
        namespace: $OP_NS
      spec:
        template:
          spec:
            containers:
              - name: operator
                image: $OPERATOR_IMAGE
                imagePullPolicy: Never
                env:
                  - name: ISSUER_IMAGE
                    value: $SIDECAR_IMAGE
                  - name: RUST_LOG
                    value: info,tokenplane_operator=debug
EOF
  cp "$overlay/kustomization.yaml" "$ARTIFACTS/overlay-kustomization.yaml"
  k apply -k "$overlay" || rc=$?
  rm -rf "$overlay"
  [ "$rc" = 0 ] || fail "kubectl apply -k config/manager (with the test images) failed"
  k wait --for=condition=Established --timeout=60s \
    crd/oauth2clients.tokenplane.io crd/tokenpolicies.tokenplane.io crd/redissentinelclusters.tokenplane.io > /dev/null
  if [ "${REUSED:-0}" = 1 ]; then
    # Same tag, maybe a new build: start the pods afresh.
    k -n "$OP_NS" rollout restart deployment/tokenplane-operator > /dev/null
  fi
  k -n "$OP_NS" rollout status deployment/tokenplane-operator --timeout=180s
}

# A reused cluster: remove what an earlier run left, through the operator
# (its finalizers clean Redis).
reset_test_objects() {
  if [ "${REUSED:-0}" != 1 ]; then
    info "a new cluster: nothing to reset"
    return
  fi
  k -n "$NS" delete pods -l tokenplane-e2e --wait=false --ignore-not-found > /dev/null
  k -n "$NS" delete networkpolicy e2e-canary-deny --ignore-not-found > /dev/null
  k -n "$NS" delete oauth2clients --all --timeout=120s
  k -n "$NS" delete tokenpolicies --all --timeout=120s
  wait_for 120 "the old issuer Deployment to go" absent -n "$NS" get deployment default-issuer
  k -n "$NS" wait --for=delete pods -l tokenplane-e2e --timeout=60s > /dev/null 2>&1 || true
}

# ---------------------------------------------------------------- scenarios

# a. The sample TokenPolicy and OAuth2Client become an issuer and credentials.
scenario_a() {
  local start kid url
  start=$(now_ms)
  k -n "$NS" apply -f "$REPO/config/samples/tokenpolicy.yaml"
  k -n "$NS" apply -f "$REPO/config/samples/oauth2client.yaml"
  # A second client selecting the same workloads: it keeps them admitted
  # by the issuer's NetworkPolicy when scenario d deletes demo.
  apply_client peer '{matchLabels: {app: demo}}'
  k -n "$NS" wait --for=condition=Ready tokenpolicy/default --timeout=120s > /dev/null ||
    fail "TokenPolicy default not Ready: $(status_of tokenpolicy default)"
  info "TokenPolicy default Ready after $(since "$start")"
  kid=$(active_kid)
  url=$(k -n "$NS" get tokenpolicy default -o jsonpath='{.status.issuerUrl}')
  [ -n "$kid" ] || fail "TokenPolicy default has no status.activeKeyId"
  [ "$url" = "$ISSUER" ] || fail "TokenPolicy default: status.issuerUrl is '$url', not $ISSUER"
  info "active key $kid, issuer $url"
  exists -n "$NS" get secret default-signing-keys || fail "no keys Secret default-signing-keys"
  wait_for 60 "the issuer Deployment default-issuer" exists -n "$NS" get deployment default-issuer
  k -n "$NS" wait --for=condition=Available deployment/default-issuer --timeout=180s > /dev/null ||
    fail "the issuer Deployment is not available (see issuer.log in the diagnostics)"
  k -n "$NS" rollout status deployment/default-issuer --timeout=180s > /dev/null
  info "issuer Deployment available after $(since "$start"), $(k -n "$NS" get deployment default-issuer -o jsonpath='{.status.readyReplicas}') ready replicas, image $(k -n "$NS" get deployment default-issuer -o jsonpath='{.spec.template.spec.containers[0].image}')"
  [ "$(k -n "$NS" get service default-issuer -o jsonpath='{.spec.ports[0].port}')" = 443 ] ||
    fail "Service default-issuer does not listen on port 443"
  exists -n "$OP_NS" get secret tokenplane-ca || fail "the operator made no CA Secret $OP_NS/tokenplane-ca"
  [ "$(k -n "$NS" get secret default-issuer-tls -o jsonpath='{.type}')" = kubernetes.io/tls ] ||
    fail "no serving certificate Secret default-issuer-tls"
  exists -n "$NS" get networkpolicy default-issuer || fail "no NetworkPolicy default-issuer"
  k -n "$NS" wait --for=condition=Ready oauth2client/demo oauth2client/peer --timeout=60s > /dev/null ||
    fail "clients not Ready: demo: $(status_of oauth2client demo); peer: $(status_of oauth2client peer)"
  info "OAuth2Clients demo and peer Ready after $(since "$start")"
  check_credentials demo
  check_credentials peer
}

# b. A selected workload gets a token and introspects it; others cannot
# reach the issuer (asserted only where NetworkPolicies are enforced).
scenario_b() {
  local iss start
  ensure_curl_pod e2e-client '{app: demo, tokenplane-e2e: client}'
  creds demo
  start=$(now_ms)
  wait_for 60 "a client_credentials token for $CLIENT_ID" got_token e2e-client curl "$CLIENT_ID" "$CLIENT_SECRET"
  info "token from $ISSUER/oauth2/token (first answer after $WAITED): kid $(jwt_kid "$TOKEN"), $(printf '%s' "$BODY" | sed 's/"access_token":"[^"]*"/"access_token":"…"/')"
  [ "$(printf '%s' "$BODY" | json_str token_type)" = Bearer ] || fail "token_type is not Bearer: $BODY"

  start=$(now_ms)
  request e2e-client curl -u "$CLIENT_ID:$CLIENT_SECRET" -d "token=$TOKEN" "$ISSUER/oauth2/introspect"
  [ "$STATUS" = 200 ] || fail "introspection answered $STATUS: $BODY"
  printf '%s' "$BODY" | grep -q '"active":[[:space:]]*true' || fail "introspection: token not active: $BODY"
  [ "$(printf '%s' "$BODY" | json_str client_id)" = "$CLIENT_ID" ] || fail "introspection: wrong client_id: $BODY"
  info "introspection: active, client_id $CLIENT_ID ($(since "$start") round trip through kubectl exec)"

  client_token e2e-client curl "$CLIENT_ID" "wrong-$CLIENT_SECRET"
  [ "$STATUS" = 401 ] && [ "$(printf '%s' "$BODY" | json_str error)" = invalid_client ] ||
    fail "a wrong secret got $STATUS $BODY, not 401 invalid_client"
  info "a wrong secret: 401 invalid_client"

  request e2e-client curl "$ISSUER/.well-known/oauth-authorization-server"
  iss=$(printf '%s' "$BODY" | json_str issuer)
  [ "$STATUS" = 200 ] && [ "$iss" = "$ISSUER" ] || fail "metadata: $STATUS, issuer '$iss'"
  info "RFC 8414 metadata names issuer $iss"

  # kind's default CNI (kindnet) enforces NetworkPolicies from kind 0.24 on;
  # older kind and CNIs like flannel do not, and then nothing can be denied.
  if netpol_enforced; then
    [ "$(reach e2e-outsider "$ISSUER/healthz")" = blocked ] ||
      fail "a pod no client selects reached the issuer: its NetworkPolicy does not hold"
    info "a pod no client selects cannot reach the issuer"
  else
    info "SKIP the denial check: NetworkPolicies are not enforced here"
  fi
}

# c. The agent validates tokens from memory and vends the workload's own.
scenario_c() {
  local vended start
  ensure_agent e2e-agent-demo demo
  ensure_agent e2e-agent-peer peer
  creds demo
  client_token e2e-agent-demo curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 200 ] || fail "no token for $CLIENT_ID: $STATUS $BODY"
  start=$(now_ms)
  accepted e2e-agent-demo "$TOKEN" || fail "agent e2e-agent-demo rejected a fresh token: $STATUS $BODY"
  info "agent validated the issuer's token ($(since "$start") including kubectl exec)"
  accepted e2e-agent-peer "$TOKEN" || fail "agent e2e-agent-peer rejected a fresh token: $STATUS $BODY"

  request e2e-agent-demo curl -G --data-urlencode "audience=$AUDIENCE" http://127.0.0.1:8081/v1/token
  vended=$(printf '%s' "$BODY" | json_str access_token)
  [ "$STATUS" = 200 ] && [ -n "$vended" ] || fail "the agent vended no token: $STATUS $BODY"
  accepted e2e-agent-peer "$vended" || fail "a vended token was rejected: $STATUS $BODY"
  printf '%s' "$BODY" | grep -q "\"$CLIENT_ID\"" || fail "the vended token's claims do not name $CLIENT_ID: $BODY"
  info "agent vended a token for $AUDIENCE; another workload's agent accepts it"

  request e2e-agent-peer curl -d "token=$TOKEN" http://127.0.0.1:8081/oauth2/introspect
  [ "$STATUS" = 200 ] && printf '%s' "$BODY" | grep -q '"active":[[:space:]]*true' ||
    fail "RFC 7662 introspection at the agent: $STATUS $BODY"
  info "RFC 7662 introspection at the agent: active"

  agent_validate e2e-agent-peer not-a-jwt
  [ "$STATUS" = 401 ] && [ "$REASON" = malformed ] || fail "garbage got $STATUS $BODY, not 401 malformed"
  info "garbage: 401 malformed"
}

# d. Deleting a client kills its tokens everywhere within seconds.
scenario_d() {
  local tok start
  ensure_agent e2e-agent-demo demo
  ensure_agent e2e-agent-peer peer
  creds demo
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 200 ] || fail "no token for $CLIENT_ID: $STATUS $BODY"
  tok=$TOKEN
  accepted e2e-agent-peer "$tok" || fail "a fresh token was rejected: $STATUS $BODY"
  accepted e2e-agent-demo "$tok" || fail "a fresh token was rejected: $STATUS $BODY"

  # The not-before mark has a resolution of a second and spares tokens
  # issued in its second (iat < mark): step past it.
  sleep 1.1
  k -n "$NS" delete oauth2client demo --wait=false > /dev/null
  start=$(now_ms)
  POLL_INTERVAL=0.2 wait_for 10 "agent e2e-agent-peer to reject the deleted client's token as client_revoked" \
    rejected_as e2e-agent-peer "$tok" client_revoked
  info "another workload's agent rejects the token (client_revoked) $WAITED after the delete (polling through kubectl exec)"
  POLL_INTERVAL=0.2 wait_for 15 "the deleted client's own agent to reject its token" rejected e2e-agent-demo "$tok"
  info "the client's own agent rejects it ($STATUS, $REASON) $(since "$start") after the delete"
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 401 ] && [ "$(printf '%s' "$BODY" | json_str error)" = invalid_client ] ||
    fail "the issuer still answers the deleted client with $STATUS $BODY, not 401 invalid_client"
  info "the issuer refuses the deleted client: 401 invalid_client ($(since "$start") after the delete)"

  k -n "$NS" wait --for=delete oauth2client/demo --timeout=60s > /dev/null ||
    fail "OAuth2Client demo still there (finalizer): $(status_of oauth2client demo)"
  wait_for 60 "the credentials Secret to be garbage-collected" absent -n "$NS" get secret demo-oauth2-credentials
  no_redis_user "agent:demo.$NS" || fail "a Redis node still has the ACL user agent:demo.$NS"
  info "finalizer done, credentials Secret gone, ACL user agent:demo.$NS gone from every node ($(since "$start"))"

  creds peer
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 200 ] || fail "the other client lost access too: $STATUS $BODY"
  accepted e2e-agent-peer "$TOKEN" || fail "the other client's new token is rejected: $STATUS $BODY"
  info "the other client is unaffected"
  k -n "$NS" delete pod e2e-agent-demo --wait=false > /dev/null
}

# e. Leader election: the Lease moves to the other replica, which reconciles.
scenario_e() {
  local old start
  k -n "$OP_NS" rollout status deployment/tokenplane-operator --timeout=120s > /dev/null
  [ "$(k -n "$OP_NS" get deployment tokenplane-operator -o jsonpath='{.status.readyReplicas}')" = 2 ] ||
    fail "the operator does not have 2 ready replicas"
  wait_for 30 "an operator pod to hold the Lease $OP_NS/tokenplane-operator" lease_held_by_another
  old=$HOLDER
  info "leader: $old (of $(k -n "$OP_NS" get pods -l app.kubernetes.io/name=tokenplane-operator -o jsonpath='{.items[*].metadata.name}'))"

  k -n "$OP_NS" delete pod "$old" --wait=false > /dev/null
  start=$(now_ms)
  POLL_INTERVAL=0.5 wait_for 30 "another replica to take the Lease from $old" lease_held_by_another "$old"
  info "$HOLDER took the Lease $WAITED after the leader's pod was deleted"

  apply_client failover
  k -n "$NS" wait --for=condition=Ready oauth2client/failover --timeout=60s > /dev/null ||
    fail "OAuth2Client failover not reconciled by the new leader: $(status_of oauth2client failover)"
  info "a new OAuth2Client Ready $(since "$start") after the leader went away"
  check_credentials failover
  ensure_agent e2e-agent-peer peer
  creds failover
  wait_for 30 "a token for $CLIENT_ID" got_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  info "the issuers accept the client the new leader registered"
  k -n "$OP_NS" rollout status deployment/tokenplane-operator --timeout=120s > /dev/null
  info "2 operator replicas again"
}

# Every issuer pod serves a JWKS with key $2 and without key $1. Meanwhile,
# notes whether a token minted with the compromised key $1 still validated.
issuers_switched() {
  local ip ips kid
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  kid=$(jwt_kid "$TOKEN")
  if [ "$kid" = "$1" ] && [ -z "${LATE_ACCEPTED:-}" ] && accepted e2e-agent-peer "$TOKEN"; then
    LATE_ACCEPTED=$(since "$COMPROMISED_AT")
  fi
  ips=$(k -n "$NS" get pods -l "$ISSUER_PODS" --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}')
  [ -n "$ips" ] || return 1
  for ip in $ips; do
    request e2e-agent-peer curl "http://$ip:8080/.well-known/jwks.json"
    [ "$STATUS" = 200 ] || return 1
    case $BODY in *"\"$1\""*) return 1 ;; esac
    case $BODY in *"\"$2\""*) ;; *) return 1 ;; esac
  done
}

new_key_signs() {
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 200 ] && [ "$(jwt_kid "$TOKEN")" = "$1" ] && accepted e2e-agent-peer "$TOKEN"
}

active_kid_moved() {
  NEW_KID=$(active_kid)
  [ -n "$NEW_KID" ] && [ "$NEW_KID" != "$1" ]
}

# f. A compromised signing key: a new key signs, the old key's tokens die.
scenario_f() {
  local old tok
  ensure_agent e2e-agent-peer peer
  creds peer
  old=$(active_kid)
  [ -n "$old" ] || fail "TokenPolicy default has no status.activeKeyId"
  client_token e2e-agent-peer curl "$CLIENT_ID" "$CLIENT_SECRET"
  [ "$STATUS" = 200 ] || fail "no token for $CLIENT_ID: $STATUS $BODY"
  tok=$TOKEN
  [ "$(jwt_kid "$tok")" = "$old" ] || fail "the token is signed by '$(jwt_kid "$tok")', status.activeKeyId is $old"
  accepted e2e-agent-peer "$tok" || fail "a fresh token was rejected: $STATUS $BODY"
  info "key $old signs; its token validates"

  sleep 1.1 # past the second of the token's iat, as in scenario d
  k -n "$NS" annotate tokenpolicy default "tokenplane.io/compromised-key=$old" --overwrite > /dev/null
  COMPROMISED_AT=$(now_ms)
  wait_for 30 "status.activeKeyId to move off $old" active_kid_moved "$old"
  info "status.activeKeyId $old -> $NEW_KID $WAITED after the annotation"
  case " $(k -n "$NS" get tokenpolicy default -o jsonpath='{.status.keys[*].kid}') " in
    *" $old "*) fail "status.keys still lists the compromised key $old" ;;
  esac
  POLL_INTERVAL=0.2 wait_for 15 "the agent to reject the token signed by $old" rejected e2e-agent-peer "$tok"
  info "the agent rejects the old token ($STATUS, $REASON) $(since "$COMPROMISED_AT") after the annotation"

  # The issuers read their keys from the mounted keys Secret, which the
  # kubelet refreshes on its own schedule (about a minute).
  LATE_ACCEPTED=''
  wait_for 180 "every issuer pod to drop key $old from its JWKS and serve $NEW_KID" issuers_switched "$old" "$NEW_KID"
  info "every issuer pod serves only the new key $(since "$COMPROMISED_AT") after the annotation"
  wait_for 30 "a new token signed by $NEW_KID that the agent accepts" new_key_signs "$NEW_KID"
  info "new tokens are signed by $NEW_KID and validate ($(since "$COMPROMISED_AT") after the annotation)"
  rejected e2e-agent-peer "$tok" || fail "the old token validates again: $STATUS $BODY"
  info "the old token stays rejected ($STATUS, $REASON)"
  if [ -n "$LATE_ACCEPTED" ]; then
    warn "a token signed with the compromised key $old and minted after the annotation validated at the agent ($LATE_ACCEPTED after it): issuers keep signing with a compromised key until the kubelet refreshes their keys Secret volume"
  fi
}

netpol_workloads() {
  k -n "$NS" get networkpolicy default-issuer -o jsonpath='{.spec.ingress[*].from[*].podSelector}'
}

# g. With no client selecting workloads, the issuer admits nobody.
scenario_g() {
  local rules
  k -n "$NS" delete oauth2clients --all --timeout=120s > /dev/null
  wait_for 30 "NetworkPolicy default-issuer to drop the deleted clients' workloads" netpol_without_workloads
  rules=$(k -n "$NS" get networkpolicy default-issuer -o jsonpath='{range .spec.ingress[*]}[{.from}]{"\n"}{end}')
  info "ingress rules of NetworkPolicy default-issuer: $(printf '%s' "$rules" | tr '\n' ' ')"
  # A rule whose `from` is empty or missing matches every source: with no
  # workloads to admit, the policy must have no ingress rule at all.
  if printf '%s\n' "$rules" | grep -qx '\[\]'; then
    fail "NetworkPolicy default-issuer has an ingress rule without sources, which admits every pod"
  fi
  info "no ingress rule admits everyone"
  if netpol_enforced; then
    ensure_curl_pod e2e-client '{app: demo, tokenplane-e2e: client}'
    [ "$(reach e2e-outsider "$ISSUER/healthz")" = blocked ] &&
      [ "$(reach e2e-client "$ISSUER/healthz")" = blocked ] ||
      fail "with no client selecting workloads, pods still reach the issuer"
    info "no pod reaches the issuer"
  else
    info "SKIP the reachability check: NetworkPolicies are not enforced here"
  fi
}

netpol_without_workloads() { [ -z "$(netpol_workloads)" ]; }

# ---------------------------------------------------------------- running

# run_scenario ID TITLE: runs scenario_ID in a subshell with errexit, so a
# failing command ends that scenario only; every scenario needs a.
run_scenario() {
  local id=$1 title=$2 start rc
  case " $SCENARIOS " in *" $id "*) ;; *) return 0 ;; esac
  if [ "$id" != a ] && [ "$PASSED" = " " ]; then
    echo "SKIP $id: $title (scenario a did not pass)"
    timing SKIP "$id: $title" -
    FAILED=1
    return 0
  fi
  log "scenario $id: $title"
  start=$(now_ms)
  set +e
  (
    set -e
    "scenario_$id"
  )
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    echo "PASS $id: $title ($(since "$start"))"
    timing PASS "$id: $title" "$(since "$start")"
    PASSED="$PASSED$id "
  else
    echo "FAIL $id: $title ($(since "$start"))"
    timing FAIL "$id: $title" "$(since "$start")"
    FAILED=1
    collect_diagnostics "$ARTIFACTS/scenario-$id"
  fi
}

finish() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ "$CLUSTER_UP" = 1 ]; then
    echo "setup failed"
    collect_diagnostics "$ARTIFACTS/setup"
  fi
  if [ "$CLUSTER_UP" = 1 ]; then
    if [ "$KEEP" = 1 ]; then
      echo
      echo "KEEP=1: the cluster stays: kubectl --context kind-$CLUSTER get pods -A"
      echo "        delete it with: kind delete cluster --name $CLUSTER"
    else
      log "deleting the kind cluster $CLUSTER"
      kind delete cluster --name "$CLUSTER"
    fi
  fi
  echo
  echo "timings:"
  sed 's/^/  /' "$SUMMARY"
  echo "  total $(($(date +%s) - RUN_START))s"
  if [ "$rc" = 0 ] && [ "$FAILED" = 0 ]; then
    echo "e2e: all scenarios passed"
  else
    echo "e2e: FAILED (artifacts in $ARTIFACTS)"
    [ "$rc" != 0 ] || rc=1
  fi
  exit "$rc"
}
trap finish EXIT

main() {
  case " $SCENARIOS " in *" a "*) ;; *) SCENARIOS="a $SCENARIOS" ;; esac
  if [ "$SCENARIOS" = "a none" ]; then SCENARIOS=none; fi
  phase "prerequisites" check_prerequisites
  phase "kind cluster $CLUSTER" create_cluster
  phase "build images" build_images
  phase "load images into kind" load_images
  phase "Redis Sentinel (e2e/redis.yaml)" deploy_redis
  phase "operator (config/manager)" deploy_operator
  phase "reset what an earlier run left" reset_test_objects

  run_scenario a "sample TokenPolicy and OAuth2Client: issuer Deployment, credentials Secret, Ready"
  run_scenario b "client_credentials token and introspection from a selected workload"
  run_scenario c "agent sidecar validates and vends tokens"
  run_scenario d "deleting an OAuth2Client revokes its tokens at agents and issuer"
  run_scenario e "leader election: the Lease moves, the new leader reconciles"
  run_scenario f "compromised signing key: new key signs, old tokens rejected"
  run_scenario g "no client selecting workloads: the issuer admits nobody"
}

main "$@"
