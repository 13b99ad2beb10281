#!/usr/bin/env bash
# Fuzzes the LTX decoder: fuzz/run.sh [SECONDS] (default 300).
#
# Installs cargo-fuzz if missing, uses a nightly toolchain if rustup has one
# (else RUSTC_BOOTSTRAP=1 on stable), seeds fuzz/corpus/decode from the shared
# LTX vectors (nothing is copied into the repository: fuzz/corpus is
# gitignored), runs the `decode` target, and prints the run time, the number
# of executions and whether crashes were found.
#
# Environment: FUZZ_TARGET (decode, the default, or compact), FUZZ_JOBS
# (parallel fuzzing processes, default 1), FUZZ_MAX_LEN (default 65536),
# SLUICE_VECTORS (default <repo>/../shared/ltx-vectors).
set -euo pipefail

secs="${1:-300}"
target="${FUZZ_TARGET:-decode}"
max_len="${FUZZ_MAX_LEN:-65536}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
vectors="${SLUICE_VECTORS:-$root/../shared/ltx-vectors}"
vectors="$(cd "$vectors" 2>/dev/null && pwd || echo "$vectors")"

case "$secs" in
  ''|*[!0-9]*) echo "usage: fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

toolchain=()
if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
  echo "toolchain: nightly ($(rustc +nightly --version))"
else
  export RUSTC_BOOTSTRAP=1
  echo "toolchain: stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

corpus="$here/corpus/$target"
artifacts="$here/artifacts/$target"
mkdir -p "$corpus" "$artifacts"
seeded=0
if [ -d "$vectors" ]; then
  while IFS= read -r -d '' f; do
    # Name seeds by content so reruns do not duplicate them.
    sum="$(sha1sum "$f" | cut -c1-40)"
    if [ ! -e "$corpus/seed-$sum" ]; then
      cp "$f" "$corpus/seed-$sum"
      seeded=$((seeded + 1))
    fi
  done < <(find "$vectors" -name '*.ltx' -type f -print0)
  if [ "$target" = compact ]; then
    # The compact target splits its input at each "LTX1" after a leading
    # options byte: seed it with runs of consecutive files of each chain.
    while IFS= read -r -d '' dir; do
      mapfile -t files < <(find "$dir" -maxdepth 1 -name '*.ltx' -type f | sort)
      for ((i = 0; i + 1 < ${#files[@]}; i++)); do
        for n in 2 3; do
          [ $((i + n)) -le ${#files[@]} ] || continue
          for opt in 0 1; do
            seed="$corpus/chain-$(basename "$dir")-$i-$n-$opt"
            [ -e "$seed" ] && continue
            { printf "\\$(printf '%03o' "$opt")"; cat "${files[@]:i:n}"; } >"$seed"
            seeded=$((seeded + 1))
          done
        done
      done
    done < <(find "$vectors" -type d -print0)
  fi
  echo "corpus: $corpus ($seeded new seeds from $vectors, $(find "$corpus" -type f | wc -l) files)"
else
  echo "corpus: $corpus (no vectors at $vectors; starting from what is there)"
fi

crashes_before="$(find "$artifacts" -type f | wc -l)"
log="$here/artifacts/$target.log"
cd "$here"
echo "building target '$target'"
cargo "${toolchain[@]}" fuzz build "$target"
echo "running target '$target' for ${secs}s (log: $log)"
start="$(date +%s)"
set +e
cargo "${toolchain[@]}" fuzz run "$target" "$corpus" -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -max_len="$max_len" \
  -timeout=10 -print_final_stats=1 ${FUZZ_JOBS:+-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"} \
  >"$log" 2>&1
rc=$?
set -e
end="$(date +%s)"

execs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{s += $2} END {print s + 0}')"
cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')"
ft="$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}')"
crashes_after="$(find "$artifacts" -type f | wc -l)"
new=$((crashes_after - crashes_before))

echo "ran:        $((end - start))s (requested ${secs}s)"
echo "executions: ${execs}"
echo "coverage:   ${cov:-?} edges, ${ft:-?} features"
echo "corpus:     $(find "$corpus" -type f | wc -l) files"
if [ "$new" -gt 0 ] || grep -qE '^(==[0-9]+== ERROR|thread .* panicked|SUMMARY: libFuzzer)' "$log"; then
  echo "CRASHES:    $new new artifact(s) in $artifacts"
  find "$artifacts" -type f -newermt "@$start" -print
  grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" || true
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "cargo fuzz exited with $rc; see $log" >&2
  tail -20 "$log" >&2
  exit "$rc"
fi
echo "crashes:    none (artifacts dir: $artifacts)"
