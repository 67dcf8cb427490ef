#!/usr/bin/env bash
# The test command (README, `.ci/run`): installs what is missing, brings the local
# cluster up, checks formatting and lints, runs every test (unit and end-to-end,
# where a missing cluster is a failure), and always brings the cluster down.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR=never
export SERIN_E2E_REQUIRED=1

e2e/cluster.sh deps

cleanup() {
  local rc=$?
  e2e/cluster.sh down || rc=1
  exit $rc
}
trap cleanup EXIT

cargo fmt --all -- --check
scripts/deny.sh
cargo build --workspace --all-targets
cargo clippy --workspace --all-targets -- -D warnings

t0=$SECONDS
e2e/cluster.sh up
echo "cluster up took $((SECONDS - t0)) s"
eval "$(e2e/cluster.sh env)"

cargo test --workspace --no-fail-fast
