#!/usr/bin/env bash
# The README's test command: installs every dependency the suite needs, then
# runs formatting and lint checks and the whole test suite (unit, property,
# vector, CLI, and interoperability tests against the real peers).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start=$(date +%s)
step() { printf '\n== %s (+%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "install dependencies"
integration/scripts/install-deps.sh
export SLUICE_LITESTREAM="$root/.tools/litestream-venv/bin/litestream"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the sluice binary (the CLI tests run it)"
cargo build --workspace --bins --locked

step "start Garage and SeaweedFS (S3) on loopback"
garage_dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-garage.XXXXXX")
weed_dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-weed.XXXXXX")
stop_servers() {
  integration/scripts/garage.sh stop "$garage_dir" >/dev/null 2>&1 || true
  integration/scripts/seaweedfs.sh stop "$weed_dir" >/dev/null 2>&1 || true
  rm -rf "$garage_dir" "$weed_dir"
}
trap stop_servers EXIT
integration/scripts/garage.sh start "$garage_dir" >/dev/null
integration/scripts/seaweedfs.sh start "$weed_dir" >/dev/null
# shellcheck disable=SC1091
. "$garage_dir/env.sh"
# shellcheck disable=SC1091
. "$weed_dir/env.sh"
export SLUICE_REQUIRE_GARAGE=1 SLUICE_REQUIRE_SEAWEEDFS=1

step "cargo test"
test_log="$garage_dir/cargo-test.log"
cargo test --workspace --locked 2>&1 | tee "$test_log"

step "SQLite's test suite over sluice mount (bounded subset)"
# Builds testfixture from Debian's sqlite3 source the first time (cached in
# .tools/sqlite-src), then runs the bounded file list on a plain directory
# and through `sluice mount`; fails on a mount-only failure in a file not on
# the script's expected-difference list. The full list: README.
integration/scripts/sqlite-suite.sh install
SLUICE_BIN="$root/target/debug/sluice"
[ -z "${CARGO_TARGET_DIR:-}" ] || SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
SLUICE_BIN=$SLUICE_BIN integration/scripts/sqlite-suite.sh ci --jobs 2

# One closing line with the totals of every test binary.
awk -v secs="$(( $(date +%s) - start ))" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ndone in %ss\n", secs; printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
