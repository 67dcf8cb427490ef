#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager v1.20.2 from Debian's source
# package, once, into a cache outside the repo. The cache key includes a hash of
# this script so a change to the patches below forces a rebuild.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_ROOT="${SERIN_E2E_CACHE:-$HOME/.cache/serin-e2e}"
SCRIPT_HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-$SCRIPT_HASH/bin"
LOG="$CACHE_ROOT/build-k8s.log"

if [[ -x "$BIN_DIR/kube-apiserver" && -x "$BIN_DIR/kube-controller-manager" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "build-k8s: must run as root (apt-get source, packages)" >&2
  exit 1
fi
mkdir -p "$CACHE_ROOT"

need_pkgs=()
for p in golang-go rsync jq dpkg-dev golang-github-modern-go-reflect2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done

# Source entries are derived from the machine's own binary entries so no
# mirror host name is written into the repo.
SRC_LIST=/etc/apt/sources.list.d/serin-e2e-src.sources
if [[ ! -f $SRC_LIST ]]; then
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$SRC_LIST"
  elif [[ -f /etc/apt/sources.list ]]; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > /etc/apt/sources.list.d/serin-e2e-src.list
  fi
  apt-get update -qq >>"$LOG" 2>&1
elif ((${#need_pkgs[@]})); then
  apt-get update -qq >>"$LOG" 2>&1
fi
if ((${#need_pkgs[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >>"$LOG" 2>&1
fi

WORK="$CACHE_ROOT/src"
mkdir -p "$WORK"
cd "$WORK"
if [[ ! -d "kubernetes-$K8S_VERSION" ]]; then
  # Debian versions it as e.g. 1.20.5+really1.20.2; the tarball unpacks to kubernetes-1.20.2/.
  ls kubernetes_*.orig.tar.gz >/dev/null 2>&1 || apt-get source --download-only kubernetes >>"$LOG" 2>&1
  tar xzf kubernetes_*.orig.tar.gz
fi
cd "kubernetes-$K8S_VERSION"

# reflect2 1.0.1 crashes under Go 1.19 (SIGSEGV in mapiterinit on first request).
R2=vendor/github.com/modern-go/reflect2
if ! grep -q "1.0.2" "$WORK/.reflect2-done" 2>/dev/null; then
  rm -rf "$R2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$R2"
  echo 1.0.2 > "$WORK/.reflect2-done"
fi
# The zero check rejects empty strings in custom resources as null under Go 1.19.
for f in vendor/github.com/go-openapi/validate/type.go vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go; do
  [[ -f $f ]] && sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$f"
done

export GOPATH=$PWD/.go GO111MODULE=off GOFLAGS=
mkdir -p .go/src/k8s.io
[[ -e .go/src/k8s.io/kubernetes ]] || ln -s ../../.. .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
echo "build-k8s: building (about 10-15 minutes on 2 cores); log: $LOG" >&2
if ! { make generated_files && make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"; } >>"$LOG" 2>&1; then
  echo "build-k8s: build failed, see $LOG" >&2
  exit 1
fi
mkdir -p "$BIN_DIR"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN_DIR/"
echo "$BIN_DIR"
