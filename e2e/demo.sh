#!/usr/bin/env bash
# The local demo (README): cluster up, operator, sample app behind Traefik with load,
# a good release promoted and a bad one rolled back on real metrics; then tears down.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

e2e/cluster.sh deps
keep=${SERIN_DEMO_KEEP:-0}
cleanup() {
  local rc=$?
  if [[ $keep != 1 ]]; then e2e/cluster.sh down || true; fi
  exit $rc
}
trap cleanup EXIT

cargo build --workspace
e2e/cluster.sh up
eval "$(e2e/cluster.sh env)"
"${CARGO_TARGET_DIR:-target}/debug/serin-demo"
