#!/usr/bin/env bash
# Fault harness, item 1: `kill -9` of `sluice replicate` at random moments
# under an application that commits numbered rows, N times (default 200).
# After each kill the replica is restored and must be a gap-free prefix of
# what the application committed; after a final clean stop it must equal the
# source. Prints one line per kill and a summary.
#   fault-kill9.sh [N] [SEED]
# CI runs the same test with N = 20 (SLUICE_KILL9_ROUNDS unset).
set -euo pipefail
# shellcheck source=fault-lib.sh
. "$(dirname "$0")/fault-lib.sh"
rounds=${1:-200}
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 ]] || { echo "usage: $0 [N] [SEED]" >&2; exit 2; }
export SLUICE_KILL9_ROUNDS=$rounds
[ -z "${2:-}" ] || export SLUICE_KILL9_SEED=$2
fault_build replicate
started=$SECONDS
fault_run replicate restart::survives_repeated_kill9s_with_gap_free_restores '^kill9 '
flog "$rounds kills done in $((SECONDS - started)) s"
