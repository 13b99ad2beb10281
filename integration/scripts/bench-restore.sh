#!/usr/bin/env bash
# Restore benchmark: builds a replica of at least 512 MiB on a fresh Garage
# with Litestream 0.5.17 (a snapshot plus many L0/L1 files), then times
# `litestream restore` and `sluice restore` of it in the same run and prints
# both, the ratio and the peak RSS of each (integration/src/bin/bench_restore.rs).
#   integration/scripts/bench-restore.sh [SIZE_MIB] [TRANSACTIONS]
# Needs: garage 2.5 (integration/scripts/garage.sh install), Litestream
# (integration/scripts/install-deps.sh), /usr/bin/time. Uses about 4x SIZE_MIB
# of disk under ${TMPDIR:-/tmp}.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
size=${1:-512}
txns=${2:-300}
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
litestream=${SLUICE_LITESTREAM:-$root/.tools/litestream-venv/bin/litestream}
[ -x "$litestream" ] || { echo "Litestream not found at $litestream: run integration/scripts/install-deps.sh" >&2; exit 1; }

cargo build --release --locked -p sluice -p integration --bin sluice --bin bench_restore
dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")
cleanup() { integration/scripts/garage.sh stop "$dir/garage" || true; rm -rf "$dir"; }
trap cleanup EXIT
env_sh=$(integration/scripts/garage.sh start "$dir/garage")
# shellcheck disable=SC1090
source "$env_sh"
target/release/bench_restore \
  --sluice "$root/target/release/sluice" --litestream "$litestream" \
  --size-mib "$size" --transactions "$txns" --work-dir "$dir/work"
