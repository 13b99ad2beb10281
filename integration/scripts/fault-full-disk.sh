#!/usr/bin/env bash
# Fault harness, item 5: the staging directory on a 4 MiB tmpfs (needs root)
# that another file fills for SECONDS (default 60) while an application
# commits numbered rows; the daemon must say why in one clear line, keep the
# replica a gap-free prefix, and catch up by itself when the space returns.
#   fault-full-disk.sh [SECONDS]
# CI runs the same test with the disk full for 8 s (SLUICE_FULL_DISK_SECS unset).
set -euo pipefail
# shellcheck source=fault-lib.sh
. "$(dirname "$0")/fault-lib.sh"
secs=${1:-60}
[[ $secs =~ ^[0-9]+$ && $secs -ge 1 ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: mounting a tmpfs needs root" >&2; exit 2; }
export SLUICE_FULL_DISK_SECS=$secs
fault_build replicate
started=$SECONDS
fault_run replicate faults::a_full_staging_disk_under_load_recovers_when_space_returns '^full disk'
flog "done in $((SECONDS - started)) s"
