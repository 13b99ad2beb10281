#!/usr/bin/env bash
# Replication benchmark: the same workloads with `sluice replicate` and with
# Litestream 0.5.17 against one fresh Garage (loopback S3), in one run; prints
# both figures, their ratio and whether issue 4's targets are met
# (integration/src/bin/bench_replicate.rs explains each measurement).
#   integration/scripts/bench-replicate.sh [--quick] [--phases sparse,steady,throughput,python,snapshot]
#       [--snapshot-mib N] [--logs DIR] [--sluice-log-level debug]
# Needs: garage 2.5 (integration/scripts/garage.sh install) and Litestream
# (integration/scripts/install-deps.sh). About 10 minutes on 2 cores; uses
# about 6 GiB of disk under ${TMPDIR:-/tmp} for the 1 GiB snapshot phase.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
litestream=${SLUICE_LITESTREAM:-$root/.tools/litestream-venv/bin/litestream}
[ -x "$litestream" ] || { echo "Litestream not found at $litestream: run integration/scripts/install-deps.sh" >&2; exit 1; }

cargo build --release -p sluice -p integration
target=${CARGO_TARGET_DIR:-$root/target}

echo "sluice tree: $(git describe --always --dirty 2>/dev/null || echo unknown)" >&2

dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-replicate.XXXXXX")
cleanup() { integration/scripts/garage.sh stop "$dir/garage" >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT
env_sh=$(integration/scripts/garage.sh start "$dir/garage")
# shellcheck disable=SC1090
source "$env_sh"
unset AWS_CA_BUNDLE
SLUICE_BIN="$target/release/sluice" SLUICE_LITESTREAM="$litestream" \
  "$target/release/bench_replicate" --work-dir "$dir/work" "$@"
