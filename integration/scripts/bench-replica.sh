#!/usr/bin/env bash
# Replica benchmark (issue 13): `sluice replica` fast-forward cost (bytes,
# GETs, LISTs after 10,000 transactions over 100 pages, against the ideal),
# freshness (commit -> visible on the replica, p50/p99 at poll 1s and 100ms)
# and read speed (point lookups and a 256 MiB scan, replica vs a local copy).
# One run; prints figures, ratios and whether each target is met
# (integration/src/bin/bench_replica.rs explains each measurement).
#   integration/scripts/bench-replica.sh [--quick] [--phases ff,fresh,read] [--ff-tx N] [--ff-pace-us N]
#       [--fresh-count N] [--lookups N] [--scan-mib N] [--sluice-log-level LEVEL] [--keep]
# Ships to Garage when SLUICE_S3_* are set (integration/scripts/garage.sh start DIR,
# then `. DIR/env.sh`), else to a file:// replica. Needs FUSE (fuse3); root for the
# cold scans (drop_caches). About 10 minutes on 2 cores; about 1.5 GiB of disk
# under ${TMPDIR:-/tmp}.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
command -v fusermount3 >/dev/null 2>&1 || { echo "fusermount3 not found: run integration/scripts/install-deps.sh" >&2; exit 1; }

cargo build --release -p sluice -p integration --bin sluice --bin bench_replica
target=${CARGO_TARGET_DIR:-$root/target}

tree=$(git describe --always --dirty 2>/dev/null || echo unknown)
dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-replica.XXXXXX")
# The program unmounts everything it mounted; this catches a kill of the
# program itself (Ctrl-C), which runs no destructors.
keep=0
for a in "$@"; do [ "$a" = --keep ] && keep=1; done
cleanup() {
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | while read -r m; do
    fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if [ "$keep" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
SLUICE_TREE="$tree" SLUICE_BIN="$target/release/sluice" \
  "$target/release/bench_replica" --work-dir "$dir/work" "$@"
