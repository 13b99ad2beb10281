#!/usr/bin/env bash
# Mount benchmark (issue 12): one-row transactions through `sluice mount`
# (capture on, file:// replica), through bindfs and on the raw directory, in
# WAL (synchronous=NORMAL) and DELETE (synchronous=FULL) mode; a 256 MiB table
# scan through the mount against the raw directory; replica objects after a
# 100,000-transaction bulk load. One run; prints figures and ratios
# (integration/src/bin/bench_mount.rs explains each measurement).
#   integration/scripts/bench-mount.sh [--quick] [--phases tx,scan,bulk] [--duration SECS]
#       [--count N] [--rounds N] [--scan-mib N] [--bulk N] [--catch-up-secs N] [--sluice-log-level LEVEL] [--keep]
# Needs: fuse3 and bindfs (integration/scripts/install-deps.sh); root for the
# cold scans (drop_caches). About 3 minutes on 2 cores (most of it the bulk
# load); uses about 1 GiB of
# disk under ${TMPDIR:-/tmp}.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
for tool in fusermount3 bindfs; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found: run integration/scripts/install-deps.sh" >&2; exit 1; }
done

cargo build --release -p sluice -p integration --bin sluice --bin bench_mount
target=${CARGO_TARGET_DIR:-$root/target}

echo "sluice tree: $(git describe --always --dirty 2>/dev/null || echo unknown)" >&2

dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-mount.XXXXXX")
# The program unmounts everything it mounted; this catches a kill of the
# program itself (Ctrl-C), which runs no destructors.
cleanup() {
  awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | while read -r m; do
    fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap cleanup EXIT
SLUICE_BIN="$target/release/sluice" "$target/release/bench_mount" --work-dir "$dir/work" "$@"
