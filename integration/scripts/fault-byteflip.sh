#!/usr/bin/env bash
# Fault harness item 6: random byte flips in a replica's stored files, each
# followed by `sluice drill`. Prints every flip (file, offset, region, whether
# the drill's plan reads it) and what the drill found, then the totals.
#   integration/scripts/fault-byteflip.sh [N] [SEED]     (default N=200)
# Exit status 1 if a drill passed on a wrong database or ended unexpectedly.
# The dev profile is optimised (opt-level 1, dependencies 2) and shares the
# tests' build; PROFILE=release builds a release pair instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
n=${1:-200}
seed=${2:-2976579765}
profile=${PROFILE:-dev}
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --locked --profile "$profile" -p sluice -p integration --bin sluice --bin fault_byteflip >&2
out=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")
SLUICE_BIN=${SLUICE_BIN:-$out/sluice} "$out/fault_byteflip" "$n" "$seed"
