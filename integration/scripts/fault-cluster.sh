#!/usr/bin/env bash
# Fault harness, item 3: a 3-node Garage cluster (replication factor 3, its
# own, on loopback; integration/scripts/garage-cluster.sh) loses node 3 to
# SIGKILL for SECONDS (default 300) while Sluice replicates through node 1
# under a live application; restores are taken through nodes 1 and 2 during
# the outage, then node 3 starts again and the final restore through every
# node must equal the source.
#   fault-cluster.sh [SECONDS]
# CI runs the same test with node 3 down for 20 s (SLUICE_NODE_DOWN_SECS unset).
set -euo pipefail
# shellcheck source=fault-lib.sh
. "$(dirname "$0")/fault-lib.sh"
secs=${1:-300}
[[ $secs =~ ^[0-9]+$ && $secs -ge 1 ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
export SLUICE_NODE_DOWN_SECS=$secs SLUICE_REQUIRE_GARAGE=1
"$root/integration/scripts/garage.sh" install
fault_build store_faults
started=$SECONDS
fault_run store_faults cluster::a_cluster_losing_a_node_loses_nothing '^cluster'
flog "done in $((SECONDS - started)) s"
