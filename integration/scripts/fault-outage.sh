#!/usr/bin/env bash
# Fault harness, item 2: the S3 server (a Garage of the test's own, on
# loopback) stopped for SECONDS (default 600) while an application commits a
# row every 5 ms, then started again on the same data and ports. Checks that
# nothing is lost (the restore equals the source) and that the WAL stays
# bounded; prints the WAL and staging sizes over time and the catch-up time.
#   fault-outage.sh [SECONDS]
# CI runs the same test with a 15 s outage (SLUICE_OUTAGE_SECS unset).
set -euo pipefail
# shellcheck source=fault-lib.sh
. "$(dirname "$0")/fault-lib.sh"
secs=${1:-600}
[[ $secs =~ ^[0-9]+$ && $secs -ge 1 ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
export SLUICE_OUTAGE_SECS=$secs SLUICE_REQUIRE_GARAGE=1
"$root/integration/scripts/garage.sh" install
fault_build store_faults
started=$SECONDS
fault_run store_faults outage::an_s3_outage_loses_nothing_and_the_wal_stays_bounded '^outage'
flog "done in $((SECONDS - started)) s"
