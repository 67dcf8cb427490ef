#!/usr/bin/env bash
# cargo deny (deny.toml): licences, bans and sources always; RustSec advisories when
# the advisory database can be fetched (it lives on github.com, which some CI
# machines cannot reach: then the check is skipped with a message, not failed).
# cargo-deny is installed into ~/.cargo/bin the first time (a few minutes, once).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo-deny >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-deny" ]; then
  echo "cargo deny: installing cargo-deny into ~/.cargo/bin"
  # Its own target dir: the project's build lock is not held for the install.
  CARGO_TARGET_DIR="${TMPDIR:-/tmp}/cargo-deny-build" cargo install cargo-deny --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

checks=(licenses bans sources)
if timeout 15 git ls-remote https://github.com/rustsec/advisory-db HEAD >/dev/null 2>&1; then
  checks=(advisories "${checks[@]}")
else
  echo "cargo deny: advisories skipped: the RustSec database (github.com/rustsec/advisory-db) is unreachable from here"
fi
t0=$SECONDS
cargo deny --log-level warn check "${checks[@]}"
echo "cargo deny ${checks[*]}: ok in $((SECONDS - t0)) s"
