# Sourced by the fault-*.sh scripts: builds the sluice binary once (a private
# copy, so that a concurrent build cannot swap it mid-run) unless SLUICE_BIN
# names one, then runs one test of the fault harness with its output shown.
# shellcheck shell=bash
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
export SLUICE_VECTORS=${SLUICE_VECTORS:-$root/../shared/ltx-vectors}

flog() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# fault_build TEST_TARGET: builds sluice (unless SLUICE_BIN names one) and
# that integration test target only, and exports SLUICE_BIN.
fault_build() {
  local target=$1
  fault_tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-fault.XXXXXX")
  trap 'rm -rf "$fault_tmp"' EXIT
  if [ -z "${SLUICE_BIN:-}" ]; then
    flog "building sluice"
    cargo build -q -p sluice --message-format=json-render-diagnostics >"$fault_tmp/build.json"
    cp "$(exe_of sluice <"$fault_tmp/build.json")" "$fault_tmp/sluice"
    export SLUICE_BIN=$fault_tmp/sluice
  fi
  flog "building the tests"
  cargo test -q -p integration --test "$target" --no-run --message-format=json-render-diagnostics >"$fault_tmp/tests.json"
}

# The executable of target $1 in cargo's JSON messages on stdin.
exe_of() {
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"]); break
else:
    sys.exit("no executable for " + sys.argv[1])' "$1"
}

# fault_run TEST_TARGET TEST_NAME GREP_PATTERN: runs one test (the executable
# fault_build made, so a later build cannot swap it), shows the lines
# matching the pattern as they come, and keeps the whole output in a log.
fault_run() {
  local target=$1 name=$2 pattern=$3 exe log rc
  # A private copy: a build in the shared target directory cannot touch it.
  cp "$(exe_of "$target" <"$fault_tmp/tests.json")" "$fault_tmp/$target-test"
  exe=$fault_tmp/$target-test
  log=$(mktemp "${TMPDIR:-/tmp}/sluice-${name##*::}.XXXXXX.log")
  flog "running $name (full output: $log)"
  set +e
  "$exe" "$name" --exact --nocapture --test-threads=1 2>&1 |
    tee "$log" | grep --line-buffered -E "$pattern"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] || ! grep -q "1 passed" "$log"; then
    grep -E "panicked|assert|left:|right:" "$log" | head -n 20 >&2 || true
    flog "FAILED (exit $rc); full output in $log"
    return 1
  fi
  flog "passed"
}
