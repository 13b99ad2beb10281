#!/usr/bin/env bash
# SQLite's own test suite (Debian's sqlite3 3.40.1 source, built as
# `testfixture`) run in a directory, to test the file system under it: the
# FUSE mount against a plain directory.
#
#   sqlite-suite.sh install [--sync]
#       Adds a deb-src source copied from the machine's Debian .sources files,
#       `apt-get source sqlite3`, installs tcl-dev, bindfs and fuse3, and builds
#       testfixture (~5 min on 2 cores). Skips what is already there. --sync
#       also builds testfixture-sync (see below; ~2 more minutes).
#   sqlite-suite.sh run --dir DIR [--bounded|--full] [--sync] [--jobs N]
#                       [--timeout S] [--out FILE] [PATTERN...]
#       Runs each chosen test file with its working directory a fresh
#       DIR/sqlite-suite/<file>/ (tester.tcl makes test.db and friends in
#       ./testdir under the cwd; one dir per file lets files run in parallel),
#       its output in DIR/sqlite-suite/<file>.log. Prints
#       `file  errors/tests  seconds  status  failed tests` per file, then a
#       total; --out FILE writes TSV rows: file, tests, errors, failed names.
#   sqlite-suite.sh compare --mount DIR --plain DIR [--bounded|--full] [--sync]
#                           [--jobs N] [--timeout S] [--out PREFIX] [PATTERN...]
#       Runs the plain directory, then the mount; prints both side by side,
#       then "failures on the mount only:" (failed on the mount, not the same
#       test in the same file on the plain dir) with each one's error text.
#       Exits 1 iff that list is non-empty. --out writes PREFIX.plain.tsv,
#       PREFIX.mount.tsv and PREFIX.mount-only.tsv.
#   sqlite-suite.sh compare-bindfs [compare options]
#       compare with a fresh bindfs mount (a C passthrough) as the mount; it
#       is unmounted on every exit path. Logs are kept when it fails.
#   sqlite-suite.sh compare-passthrough [compare options]
#       compare with fuse-fs's plain passthrough (the fuse_passthrough test
#       tool, built and mounted here) as the mount; unmounted on every exit
#       path. FUSE_PASSTHROUGH_BIN / FUSE_PASSTHROUGH_ARGS override the
#       binary and add options.
#   sqlite-suite.sh compare-sluice [compare options]
#       compare with `sluice mount DATA MNT file://REPLICA` (the primary,
#       capturing every transaction) as the mount; SIGTERM then a lazy
#       unmount on every exit path. SLUICE_BIN names the binary (default:
#       built here); SLUICE_SUITE_DIR keeps the run there.
#   sqlite-suite.sh ci [compare options]
#       compare-sluice --bounded, then exit 1 iff a mount-only failure is in
#       a file not on the EXPECTED list (each entry gives its reason). What
#       test-all.sh runs (4-6 min on 2 busy cores).
#
# PATTERNs are shell globs on test file names without ".test" (default: wal*
# journal* pager* lock* trans* rollback*). --bounded (the default) runs the
# BOUNDED list below (40-65 s on a plain dir, 75-180 s on bindfs, 2 jobs; 180 s
# limit per file); --full runs every matching file (60 by default; ~14 min on a
# plain dir, ~31 min on bindfs; 1800 s limit per file, walcrash3 3600 s).
#
# A file that prints no summary (crashed, or killed at its time limit) counts
# as a failed test named FILE:crash or FILE:timeout, with the tests it failed
# before that. The testfixture runs as the calling user; as root, tests that
# expect permission errors (wal2-13.*, pager1.4.7.2, pager1.4.8.1) fail on any
# directory. testfixture is built, as upstream builds it, with
# SQLITE_NO_SYNC: SQLite never calls fsync in these tests. --sync runs
# testfixture-sync instead, built without it, so every sync SQLite makes
# reaches the file system as fdatasync: same tests, slower (bounded: ~3 min on
# a plain dir, ~6+ on bindfs; its per-file limit is then 600 s).
#
# Env: SQLITE_SUITE_SRC (default $ROOT/.tools/sqlite-src) holds the source tree
# and the testfixture.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC_CACHE="${SQLITE_SUITE_SRC:-$ROOT/.tools/sqlite-src}"
DEFAULT_PATTERNS=(wal\* journal\* pager\* lock\* trans\* rollback\*)

log() { printf '[sqlite-suite] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

# Runs "$@" and logs how long it took, under the label $1.
timed() {
  local label=$1 t0=$SECONDS; shift
  log "$label ..."
  "$@"
  log "$label took $((SECONDS - t0)) s"
}

# The unpacked source tree (apt-get source makes sqlite3-<version>/).
src_tree() {
  local d
  for d in "$SRC_CACHE"/sqlite3-*/; do
    [ -f "$d/configure" ] && { echo "${d%/}"; return 0; }
  done
  return 1
}

# testfixture_path [testfixture|testfixture-sync]: the built binary, or fails.
testfixture_path() {
  local t
  t=$(src_tree) || return 1
  [ -x "$t/${1:-testfixture}" ] && echo "$t/${1:-testfixture}"
}

# Prints deb-src stanzas mirroring every `Types: deb` stanza of the machine's
# deb822 source files: same URIs, Suites, Components and Signed-By.
deb_src_stanzas() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    [ "$(basename "$f")" = sluice-deb-src.sources ] && continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
          print "Types: deb-src"; print "URIs: " uris; print "Suites: " suites
          print "Components: " comps
          if (sb != "") print "Signed-By: " sb
          print ""
        }
        types = uris = suites = comps = sb = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^Types:/      { sub(/^Types:[ \t]*/, "");      types = $0; next }
      /^URIs:/       { sub(/^URIs:[ \t]*/, "");       uris = $0; next }
      /^Suites:/     { sub(/^Suites:[ \t]*/, "");     suites = $0; next }
      /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0; next }
      /^Signed-By:/  { sub(/^Signed-By:[ \t]*/, "");  sb = $0; next }
      END { flush() }
    ' "$f"
  done
}

add_deb_src() {
  local target=/etc/apt/sources.list.d/sluice-deb-src.sources stanzas
  stanzas=$(deb_src_stanzas)
  [ -n "$stanzas" ] || die "no 'Types: deb' stanza in /etc/apt/sources.list.d/*.sources to copy"
  if [ -f "$target" ] && [ "$(cat "$target")" = "$stanzas" ]; then
    log "deb-src source already in $target"
  else
    printf '%s\n' "$stanzas" >"$target"
    log "wrote $target"
  fi
  timed "apt-get update" apt-get update -qq
}

cmd_install() {
  local t0=$SECONDS tf tree sync=0
  case "${1:-}" in
    --sync) sync=1 ;;
    "") ;;
    *) die "usage: sqlite-suite.sh install [--sync]" ;;
  esac
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  dpkg -s tcl-dev >/dev/null 2>&1 || need+=(tcl-dev)
  command -v bindfs >/dev/null 2>&1 || need+=(bindfs)
  command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
  command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v xz >/dev/null 2>&1 || need+=(xz-utils)
  if tf=$(testfixture_path); then
    if [ ${#need[@]} -gt 0 ]; then
      timed "apt-get update" apt-get update -qq
      timed "apt-get install ${need[*]}" apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    log "ok: $tf (already built)"
    [ $sync -eq 0 ] || testfixture_path testfixture-sync >/dev/null ||
      build_in "$(src_tree)" testfixture-sync
    return 0
  fi
  add_deb_src
  if [ ${#need[@]} -gt 0 ]; then
    timed "apt-get install ${need[*]}" apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  mkdir -p "$SRC_CACHE"
  if ! tree=$(src_tree); then
    # apt-get source runs as root here; without this it warns that it cannot
    # drop privileges to _apt for the download.
    (cd "$SRC_CACHE" && timed "apt-get source sqlite3" \
      apt-get source -qq -o APT::Sandbox::User=root sqlite3)
    tree=$(src_tree) || die "apt-get source sqlite3 left no source tree in $SRC_CACHE"
  fi
  # configure finds Tcl through tclConfig.sh; tcl-dev puts it here.
  local c0=$SECONDS
  log "configure ..."
  (cd "$tree" && nice ./configure --with-tcl=/usr/lib/tcl8.6 >configure.log 2>&1) ||
    die "configure failed, see $tree/configure.log"
  log "configure took $((SECONDS - c0)) s"
  build_in "$tree" testfixture
  [ $sync -eq 0 ] || build_in "$tree" testfixture-sync
  tf=$(testfixture_path) || die "no testfixture after make"
  log "ok: $tf (install took $((SECONDS - t0)) s)"
}

# make TARGET in TREE; its output goes to TREE/TARGET.make.log. testfixture-sync
# comes from a copy of the Makefile with one more rule: upstream's testfixture
# rule without -DSQLITE_NO_SYNC=1, so fsync reaches the file system.
build_in() {
  local tree=$1 target=$2 t0=$SECONDS
  log "make $target (in $tree) ..."
  if [ "$target" = testfixture-sync ]; then
    # shellcheck disable=SC2016 # make variables, for make to expand
    { cat "$tree/Makefile"
      printf '\ntestfixture-sync$(TEXE):\t$(TESTFIXTURE_SRC)\n'
      printf '\t$(LTLINK) $(TEMP_STORE) $(TESTFIXTURE_FLAGS) -o $@ $(TESTFIXTURE_SRC) $(LIBTCL) $(TLIBS)\n'
    } >"$tree/Makefile.sync"
    (cd "$tree" && nice make -f Makefile.sync -j2 testfixture-sync >"$target.make.log" 2>&1) ||
      die "make $target failed, see $tree/$target.make.log"
  else
    (cd "$tree" && nice make -j2 "$target" >"$target.make.log" 2>&1) ||
      die "make $target failed, see $tree/$target.make.log"
  fi
  log "make $target took $((SECONDS - t0)) s"
}


# ---------------------------------------------------------------- run ------

# --bounded: every wal*/journal*/pager*/lock*/trans*/rollback* file except the
# seven slowest, which --full adds: walcrash3 (a 10,000-crash soak),
# pagerfault, pagerfault2, walfault (OOM and I/O-error injection: one
# scenario replayed with a fault at every step; the faults come from SQLite's
# test VFS, not from the file system), walthread, walslow (timed multi-thread
# and multi-process stress) and trans2. Slowest first; the comments give the
# seconds measured with --jobs 2 on a plain ext4 directory / on bindfs, on a
# loaded 2-core machine (load ~12): 63 s and 182 s of wall time in all; 37 s
# and 74 s on the same machine at rest.
BOUNDED=(
  wal3          #  9.5 / 81
  walcrash      # 23.0 / 43
  trans         #  8.7 / 40
  walprotocol   # 20.1 / 20 (sleeps: waits for busy timeouts)
  pager1        #  5.1 / 20
  walsetlk      # 15.5 / 15 (sleeps)
  walcrash4     #  4.8 / 15
  walfault2     #  2.7 / 14
  walcrash2     # 15.2 / 14
  pager2        #  4.8 / 13
  wal64k        #  1.6 / 11
  walvfs        # 10.1 / 10 (sleeps)
  wal           #  3.4 / 7.4
  wal2          #  0.6 / 6.0
  walrofault    #  0.4 / 4.0
  wal5          #  0.7 / 3.2
  wal9          #  1.4 / 3.0
  wal4          #  1.0 / 2.2
  walro2        #  1.0 / 1.7
  # under a second each on both
  walbak walbig walblock walcksum walhook walmode walnoshm waloverwrite
  walpersist walprotocol2 walro walshared wal6 wal7 wal8
  journal1 journal2 journal3 pager3 pager4 pagerfault3 pageropt
  lock lock2 lock3 lock4 lock5 lock6 lock7
  trans3 transitive1 rollback rollback2 rollbackfault
)

# The slowest files, slowest first (seconds on a plain directory, --jobs 2):
# --full starts them first so two jobs finish close together.
LONG_FIRST=(walcrash3 pagerfault pagerfault2 walthread walslow walfault trans2
  walcrash walcrash2 wal3 walprotocol trans walsetlk pager2 walvfs walcrash4)

# Per-file limits for --full: pagerfault2 took 229 s on a plain directory and
# more than 600 s on bindfs (many 1 KiB writes, each a FUSE round trip);
# walcrash3 took 764 s and 1267 s.
FULL_LIMIT=1800
declare -A FULL_TIMEOUT=([walcrash3]=3600)

tests_dir() { echo "$(src_tree)/test"; }

# Reorders names on stdin: LONG_FIRST members first, the rest as they come.
long_first() {
  awk -v long="${LONG_FIRST[*]}" '
    BEGIN { n = split(long, l, " "); for (i = 1; i <= n; i++) rank[l[i]] = i }
    { r = ($0 in rank) ? rank[$0] : n + NR; print r "\t" $0 }' | sort -n | cut -f2
}

# Prints the test names (no .test) that match the patterns.
select_full() {
  local dir pat f
  dir=$(tests_dir)
  for pat in "$@"; do
    for f in "$dir"/$pat.test; do
      [ -f "$f" ] && basename "$f" .test
    done
  done | awk '!seen[$0]++' | long_first
}

# Prints the BOUNDED entries that match the patterns.
select_bounded() {
  local name pat
  for name in "${BOUNDED[@]}"; do
    for pat in "$@"; do
      # shellcheck disable=SC2254
      case "$name" in $pat) echo "$name"; break ;; esac
    done
  done
}

# Prints the names of the tests that failed in a log, space-terminated: for a
# file that stopped before its summary. tester.tcl prints "NAME..." then either
# " Ok", "Error: ..." or "! NAME expected: ...".
failed_from_log() {
  awk '/^[^ \t!].*\.\.\.$/ { cur = substr($0, 1, length($0) - 3); next }
       /^! / { f = $2 } /^Error: / { f = cur }
       /^(! |Error: )/ && f != "" && !(f in seen) { seen[f]; printf "%s ", f }
       /\.\.\. Ok$/ { cur = "" }' "$1"
}

# Runs one test file in a fresh OUT/NAME/ and writes OUT/NAME.result, one TSV
# line: name tests errors seconds status failed-names. status is ok, failed,
# timeout or crash; a file that printed no summary counts as one failed test
# named NAME:timeout or NAME:crash, so compare sees it.
run_one() {
  local out=$1 name=$2 limit=$3 tf=$4 tdir=$5
  local wd="$out/$name" log="$out/$name.log" t0 rc=0 secs summary tests errors failed status
  rm -rf "$wd"
  mkdir -p "$wd"
  t0=$(date +%s.%N)
  # timeout leads its own process group and kills all of it (lock tests start
  # child testfixtures); on_signal finds it as this subshell's child.
  timeout -k 10 "$limit" env -C "$wd" "$tf" "$tdir/$name.test" </dev/null >"$log" 2>&1 || rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  summary=$(grep -E '^[0-9]+ errors out of [0-9]+ tests' "$log" | tail -n1 || true)
  failed=$(sed -n 's/^!Failures on these tests: *//p' "$log" | tail -n1)
  if [ -n "$summary" ]; then
    errors=${summary%% *}
    tests=$(awk '{ print $5 }' <<<"$summary")
    status=ok; [ "$errors" -eq 0 ] || status=failed
  else
    # No summary: count and name what the log shows, plus the file itself.
    tests=$(grep -cE '^[^ !].*\.\.\.( Ok)?$' "$log" || true)
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; else status=crash; fi
    failed="$(failed_from_log "$log")$name:$status"
    errors=$(wc -w <<<"$failed")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tests" "$errors" "$secs" "$status" "${failed% }" \
    >"$out/$name.result"
}

# Runs NAMES in parallel, at most $jobs at a time, longest first (BOUNDED and
# the full list are both written roughly longest first).
run_all() {
  local out=$1 limit=$2 jobs=$3; shift 3
  local tf tdir name
  tf=$(testfixture_path "$FIXTURE") ||
    die "no $FIXTURE: run 'sqlite-suite.sh install$([ "$FIXTURE" = testfixture ] || echo " --sync")' first"
  tdir=$(tests_dir)
  for name in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$out" "$name" "${FILE_LIMIT[$name]:-$limit}" "$tf" "$tdir" &
  done
  wait
  for name in "$@"; do
    [ -f "$out/$name.result" ] ||
      printf '%s\t0\t1\t0\tcrash\t%s:crash\n' "$name" "$name" >"$out/$name.result"
  done
}

# On INT or TERM: stop the running test files (each timeout's process group),
# then exit, which runs the EXIT trap (compare-bindfs unmounts there).
on_signal() {
  local job t
  for job in $(jobs -p); do
    for t in $(pgrep -P "$job" || true); do kill -TERM -- "-$t" 2>/dev/null || true; done
  done
  exit 130
}

# Prints the result table of a results dir for NAMES, and a total line.
print_results() {
  local out=$1; shift
  local name
  for name in "$@"; do cat "$out/$name.result"; done | awk -F'\t' '
    { printf "%-16s %6s/%-6s %7ss  %-7s %s\n", $1, $3, $2, $4, $5, $6
      t += $2; e += $3; s += $4; if ($3 > 0) nf++ }
    END { printf "total: %d errors out of %d tests in %d files (%d with errors), %.0f s of test time\n", e, t, NR, nf, s }'
}

# Shared option parsing for run and compare; sets the globals below.
parse_opts() {
  MODE=bounded JOBS=2 TIMEOUT="" OUT_FILE="" RUN_DIR="" MOUNT_DIR="" PLAIN_DIR="" PATTERNS=()
  FIXTURE=testfixture
  local n
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) RUN_DIR=$2; shift 2 ;;
      --mount) MOUNT_DIR=$2; shift 2 ;;
      --plain) PLAIN_DIR=$2; shift 2 ;;
      --bounded) MODE=bounded; shift ;;
      --full) MODE=full; shift ;;
      --sync) FIXTURE=testfixture-sync; shift ;;
      --jobs) JOBS=$2; shift 2 ;;
      --timeout) TIMEOUT=$2; shift 2 ;;
      --out) OUT_FILE=$2; shift 2 ;;
      -*) die "unknown option $1" ;;
      *) PATTERNS+=("$1"); shift ;;
    esac
  done
  [ ${#PATTERNS[@]} -gt 0 ] || PATTERNS=("${DEFAULT_PATTERNS[@]}")
  declare -gA FILE_LIMIT=()
  if [ -z "$TIMEOUT" ]; then
    if [ $MODE = bounded ]; then
      # With real syncs trans alone took 138 s on a plain dir, >180 s on bindfs.
      TIMEOUT=180; [ "$FIXTURE" = testfixture ] || TIMEOUT=600
    else
      TIMEOUT=$FULL_LIMIT
      for n in "${!FULL_TIMEOUT[@]}"; do FILE_LIMIT[$n]=${FULL_TIMEOUT[$n]}; done
    fi
  fi
  SELECTED=()
  while read -r n; do [ -n "$n" ] && SELECTED+=("$n"); done < <(select_$MODE "${PATTERNS[@]}")
  [ ${#SELECTED[@]} -gt 0 ] || die "no test file matches: ${PATTERNS[*]} ($MODE)"
}

# Runs the selected files under DIR (made absolute) into DIR/sqlite-suite.
run_into() {
  local dir=$1 out t0=$SECONDS
  mkdir -p "$dir"
  out="$(cd "$dir" && pwd)/sqlite-suite"
  rm -rf "$out"
  mkdir -p "$out"
  log "running ${#SELECTED[@]} files ($MODE, $FIXTURE, --jobs $JOBS, ${TIMEOUT}s each) in $out"
  run_all "$out" "$TIMEOUT" "$JOBS" "${SELECTED[@]}"
  log "done in $((SECONDS - t0)) s (wall)"
  RESULTS=$out
}

write_tsv() {
  local out=$1 file=$2 name
  { printf 'file\ttests\terrors\tfailed\n'
    for name in "${SELECTED[@]}"; do
      awk -F'\t' '{ printf "%s\t%s\t%s\t%s\n", $1, $2, $3, $6 }' "$out/$name.result"
    done; } >"$file"
}

cmd_run() {
  parse_opts "$@"
  [ -n "$RUN_DIR" ] || die "run needs --dir DIR"
  run_into "$RUN_DIR"
  print_results "$RESULTS" "${SELECTED[@]}"
  [ -z "$OUT_FILE" ] || write_tsv "$RESULTS" "$OUT_FILE"
}

# ------------------------------------------------------------ compare ------

# Prints "file<TAB>test" for each failed test in a results dir.
failed_pairs() {
  local out=$1; shift
  local name
  for name in "$@"; do
    awk -F'\t' '{ n = split($6, f, " "); for (i = 1; i <= n; i++) print $1 "\t" f[i] }' "$out/$name.result"
  done | sort -u
}

# Prints the two result sets side by side.
print_side_by_side() {
  local plain=$1 mount=$2; shift 2
  local name
  printf '%-16s %-24s %-24s\n' file "plain errors/tests secs" "mount errors/tests secs"
  for name in "$@"; do paste "$plain/$name.result" "$mount/$name.result"; done | awk -F'\t' '
    { printf "%-16s %-24s %-24s\n", $1, $3 "/" $2 " " $4 "s", $9 "/" $8 " " $10 "s"
      pt += $2; pe += $3; ps += $4; mt += $8; me += $9; ms += $10 }
    END { printf "%-16s %-24s %-24s\n", "total", sprintf("%d/%d %.0fs", pe, pt, ps), sprintf("%d/%d %.0fs", me, mt, ms) }'
  echo
  echo "plain failures:"
  for name in "$@"; do awk -F'\t' '$3 > 0 { print "  " $1 ": " $6 }' "$plain/$name.result"; done
  echo "mount failures:"
  for name in "$@"; do awk -F'\t' '$3 > 0 { print "  " $1 ": " $6 }' "$mount/$name.result"; done
}

# For each "file<TAB>test" on stdin, prints the test's error lines (expected/got
# or "Error: ...") from the mount's log; for a file that timed out or crashed,
# the last lines it printed.
explain_failures() {
  local mount=$1 file test
  while IFS=$'\t' read -r file test; do
    echo "  $file: $test"
    case "$test" in
      *:timeout) tail -n 2 "$mount/$file.log" ;;
      *:crash) awk '/\.\.\.( Ok)?$/ { buf = ""; n = 0; next }
                    n < 4 { buf = buf $0 "\n"; n++ } END { printf "%s", buf }' "$mount/$file.log" ;;
      *) awk -v t="$test" '$0 == t "..." { on = 1; next }
                           on && /^(Error: |! )/ { print; if (++n >= 3) exit; next }
                           on { exit }' "$mount/$file.log" ;;
    esac | cut -c1-240 | sed 's/^/      /'
  done
}

cmd_compare() {
  parse_opts "$@"
  if [ -z "$MOUNT_DIR" ] || [ -z "$PLAIN_DIR" ]; then die "compare needs --mount DIR and --plain DIR"; fi
  local plain mount only
  run_into "$PLAIN_DIR"; plain=$RESULTS
  run_into "$MOUNT_DIR"; mount=$RESULTS
  echo
  print_side_by_side "$plain" "$mount" "${SELECTED[@]}"
  only=$(comm -23 <(failed_pairs "$mount" "${SELECTED[@]}") <(failed_pairs "$plain" "${SELECTED[@]}"))
  if [ -n "$OUT_FILE" ]; then
    write_tsv "$plain" "$OUT_FILE.plain.tsv"
    write_tsv "$mount" "$OUT_FILE.mount.tsv"
    { printf 'file\ttest\n'; [ -z "$only" ] || printf '%s\n' "$only"; } >"$OUT_FILE.mount-only.tsv"
  fi
  echo
  if [ -z "$only" ]; then
    echo "failures on the mount only: none"
    return 0
  fi
  local n
  n=$(wc -l <<<"$only")
  echo "failures on the mount only: $n"
  # Whole files that crashed or timed out first: they explain the rest.
  { grep -E ':(crash|timeout)$' <<<"$only" || true; grep -vE ':(crash|timeout)$' <<<"$only" || true; } |
    head -n 40 | explain_failures "$mount"
  [ "$n" -le 40 ] || echo "  ... and $((n - 40)) more: see $mount/*.log"
  return 1
}

# ------------------------------------------------------ compare-bindfs ------

# compare with bindfs (a C passthrough FUSE filesystem) as the mount: the
# floor any passthrough can reach, and a stand-in until `sluice mount` exists.
# Mounts a fresh temp dir, and unmounts it on every exit path.
cmd_compare_bindfs() {
  command -v bindfs >/dev/null 2>&1 || die "bindfs missing: run 'sqlite-suite.sh install'"
  local base rc=0
  base=$(mktemp -d "${TMPDIR:-/tmp}/sqlite-suite-bindfs.XXXXXX")
  mkdir -p "$base/backing" "$base/mnt" "$base/plain"
  # shellcheck disable=SC2064
  trap "fusermount3 -u '$base/mnt' 2>/dev/null || umount -l '$base/mnt' 2>/dev/null || true" EXIT
  bindfs "$base/backing" "$base/mnt"
  mountpoint -q "$base/mnt" || die "bindfs did not mount $base/mnt"
  log "bindfs $base/backing on $base/mnt"
  cmd_compare --mount "$base/mnt" --plain "$base/plain" "$@" || rc=$?
  if [ $rc -eq 0 ]; then
    fusermount3 -u "$base/mnt" && rm -rf "$base"
  else
    log "logs kept: $base/plain/sqlite-suite and $base/backing/sqlite-suite (the mount's)"
  fi
  return $rc
}

# ------------------------------------------------- compare-passthrough ------

# compare with fuse-fs's own passthrough filesystem as the mount: the
# `fuse_passthrough` test tool (integration/src/bin), no hooks. It is built
# here and copied next to the mount (the shared target dir may be rebuilt by
# others mid-run), unless FUSE_PASSTHROUGH_BIN names a binary. Extra
# arguments for it go in FUSE_PASSTHROUGH_ARGS (e.g. --no-kernel-passthrough).
# stop_passthrough PID BASE: SIGTERM (it unmounts), up to 15 s for it to go,
# then a lazy unmount whatever happened.
stop_passthrough() {
  local pid=$1 base=$2 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "fuse_passthrough did not exit: $(tail -n 3 "$base/fuse_passthrough.log")"
  fi
  fusermount3 -u -z "$base/mnt" 2>/dev/null || true
}

cmd_compare_passthrough() {
  local base rc=0 bin pid i
  base=$(mktemp -d "${TMPDIR:-/tmp}/sqlite-suite-fusefs.XXXXXX")
  mkdir -p "$base/backing" "$base/mnt" "$base/plain"
  bin=${FUSE_PASSTHROUGH_BIN:-}
  if [ -z "$bin" ]; then
    timed "cargo build fuse_passthrough" \
      bash -c "cd '$ROOT' && nice cargo build -q -p integration --bin fuse_passthrough" ||
      die "building fuse_passthrough failed"
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/debug/fuse_passthrough" "$base/fuse_passthrough"
    bin=$base/fuse_passthrough
  fi
  # Started from a subshell so it is not one of this shell's jobs: run_all
  # counts and waits for jobs.
  # shellcheck disable=SC2086 # FUSE_PASSTHROUGH_ARGS is a list of options
  ( "$bin" "$base/backing" "$base/mnt" ${FUSE_PASSTHROUGH_ARGS:-} >"$base/fuse_passthrough.log" 2>&1 &
    echo $! >"$base/fuse_passthrough.pid" )
  pid=$(cat "$base/fuse_passthrough.pid")
  # shellcheck disable=SC2064
  trap "stop_passthrough $pid '$base'" EXIT
  for i in $(seq 300); do
    grep -q '^mounted ' "$base/fuse_passthrough.log" && break
    kill -0 "$pid" 2>/dev/null || die "fuse_passthrough exited: $(cat "$base/fuse_passthrough.log")"
    [ "$i" -lt 300 ] || die "fuse_passthrough did not mount within 30 s"
    sleep 0.1
  done
  log "$(head -n1 "$base/fuse_passthrough.log")"
  cmd_compare --mount "$base/mnt" --plain "$base/plain" "$@" || rc=$?
  stop_passthrough "$pid" "$base"
  trap - EXIT
  if [ $rc -eq 0 ]; then
    rm -rf "$base"
  else
    log "logs kept: $base/plain/sqlite-suite and $base/backing/sqlite-suite (the mount's)"
  fi
  return $rc
}

# ------------------------------------------------------ compare-sluice ------

# stop_sluice PID MNT LOG: SIGTERM (sluice unmounts on it), up to 30 s for it
# to go, then a lazy unmount whatever happened.
stop_sluice() {
  local pid=$1 mnt=$2 logf=$3 i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "sluice did not exit within 30 s of SIGTERM: $(tail -n 3 "$logf")"
  fi
  fusermount3 -u -z "$mnt" 2>/dev/null || true
}

# compare with `sluice mount DATA MNT file://REPLICA` as the mount: the real
# primary, capturing every transaction the tests make. The binary is
# SLUICE_BIN, else the target dir's debug build (built here), copied aside
# either way (the shared target dir may be rebuilt mid-run). Transactions the
# primary refuses by design (see the README) fail tests here; compare still
# reports them. SLUICE_SUITE_DIR keeps the run in that directory (default: a
# fresh temp dir, removed when nothing failed).
cmd_compare_sluice() {
  local base rc=0 bin pid i
  base=${SLUICE_SUITE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sqlite-suite-sluice.XXXXXX")}
  [ ! -e "$base/mnt" ] || ! mountpoint -q "$base/mnt" || die "$base/mnt is still mounted"
  rm -rf "${base:?}/data" "${base:?}/mnt" "${base:?}/plain" "${base:?}/replica"
  mkdir -p "$base/data" "$base/mnt" "$base/plain" "$base/replica"
  bin=${SLUICE_BIN:-}
  if [ -z "$bin" ]; then
    timed "cargo build sluice" bash -c "cd '$ROOT' && nice cargo build -q -p sluice" ||
      die "building sluice failed"
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/debug/sluice
  fi
  [ -x "$bin" ] || die "no sluice binary at $bin"
  cp "$bin" "$base/sluice"
  # Started from a subshell so it is not one of this shell's jobs: run_all
  # counts and waits for jobs.
  ( "$base/sluice" mount "$base/data" "$base/mnt" "file://$base/replica" >"$base/sluice.log" 2>&1 &
    echo $! >"$base/sluice.pid" )
  pid=$(cat "$base/sluice.pid")
  # shellcheck disable=SC2064
  trap "stop_sluice $pid '$base/mnt' '$base/sluice.log'" EXIT
  for i in $(seq 300); do
    grep -q ' mounted' "$base/sluice.log" && mountpoint -q "$base/mnt" && break
    kill -0 "$pid" 2>/dev/null || die "sluice mount exited: $(tail -n 20 "$base/sluice.log")"
    [ "$i" -lt 300 ] || die "sluice did not mount within 30 s: $(tail -n 5 "$base/sluice.log")"
    sleep 0.1
  done
  log "sluice mount $base/data on $base/mnt (pid $pid), replica file://$base/replica"
  cmd_compare --mount "$base/mnt" --plain "$base/plain" "$@" || rc=$?
  stop_sluice "$pid" "$base/mnt" "$base/sluice.log"
  trap - EXIT
  kill -0 "$pid" 2>/dev/null && log "warning: sluice (pid $pid) still running"
  if [ $rc -eq 0 ] && [ -z "${SLUICE_SUITE_DIR:-}" ]; then
    rm -rf "$base"
  else
    log "logs kept: $base/plain/sqlite-suite, $base/data/sqlite-suite (the mount's), $base/sluice.log"
  fi
  return $rc
}

# ------------------------------------------------------------------ ci ------

# Test files that fail on `sluice mount` and not on a plain directory, by
# design (README, "SQLite's test suite over the mount"). `ci` fails on a
# mount-only failure in any other file. Reasons: EXCL = WAL with
# locking_mode=EXCLUSIVE (or a test VFS keeping the WAL-index in memory):
# refused, no commit signal; MEMOFF = journal_mode=MEMORY/OFF: refused;
# COPY = the test writes database files itself (Tcl `file copy`,
# hexio_write, db_save/db_restore): refused, not whole pages (EINVAL) or
# not holding SQLite's write lock (EPERM); a refused copy fails every later
# test of the file that uses it.
declare -A EXPECTED=(
  [journal2]="COPY: forcecopy test.db testX.db (EPERM)"
  [lock5]="EPERM: the unix-dotfile VFS takes no POSIX locks, so its writes do not hold SQLite's write lock"
  [pager1]="COPY (db_save/db_restore of hot journals), EXCL, MEMOFF; the refused copies crash the file"
  [pager2]="MEMOFF: pager2-1.2.0 runs journal_mode=OFF/MEMORY; the file stops there"
  [pager4]="MEMOFF: pager4-1.7/1.8 switch to journal_mode=OFF and MEMORY"
  [wal]="COPY: wal-12.4 copies test.db with Tcl (EINVAL); the file stops there"
  [wal2]="EXCL: wal2-5/6/11 use locking_mode=EXCLUSIVE in WAL mode; the file stops at wal2-11"
  [wal3]="EXCL: wal3-3/6 run a testvfs whose WAL-index lives in memory; checkpoints write without a lock sluice can see (EPERM)"
  [wal6]="MEMOFF: wal6-1.*.memory / .off"
  [walbak]="page size: walbak-3.4 backs up into a database of another page size (refused: one page size per replicated database)"
  [walcksum]="COPY: walcksum-1.big copies test.db and test.db-wal with Tcl (EINVAL); the file stops there"
  [walfault2]="EXCL + COPY: faultsim_save_and_close copies files; locking_mode=EXCLUSIVE"
  [walmode]="EXCL (false positive): leaving WAL mode rewrites the header under an exclusive lock after the WAL-index is closed, which looks like exclusive locking mode"
  [walnoshm]="EXCL + COPY: locking_mode=EXCLUSIVE without shared memory; copies test.db with Tcl"
  [waloverwrite]="COPY: copies test.db into test.db2 with Tcl (EPERM); the file stops there"
  [walro2]="COPY: copies test.db with Tcl (EINVAL); the file stops there"
  [walvfs]="EXCL: a test VFS (tvfs) without the -shm file's locks; writes by a checkpointer sluice cannot see hold no lock (EPERM)"
)

# ci [compare options]: compare-sluice (--bounded unless said otherwise),
# then fails (exit 1) iff a test fails on the mount, not on the plain
# directory, in a file missing from EXPECTED.
cmd_ci() {
  local out rc=0 unexpected
  out=$(mktemp -d "${TMPDIR:-/tmp}/sqlite-suite-ci.XXXXXX")
  SLUICE_SUITE_DIR=${SLUICE_SUITE_DIR:-$out/run} cmd_compare_sluice --bounded "$@" --out "$out/res" || rc=$?
  [ -f "$out/res.mount-only.tsv" ] || die "compare-sluice wrote no results (exit $rc)"
  unexpected=$(awk -F'\t' -v expected="${!EXPECTED[*]}" '
    BEGIN { n = split(expected, e, " "); for (i = 1; i <= n; i++) ok[e[i]] = 1 }
    NR > 1 && !($1 in ok) { print "  " $1 ": " $2 }' "$out/res.mount-only.tsv")
  local files
  files=$(awk -F'\t' 'NR > 1 { print $1 }' "$out/res.mount-only.tsv" | sort -u | tr '\n' ' ')
  echo
  echo "expected differences (by design, see the README): ${files:-none}"
  if [ -n "$unexpected" ]; then
    echo "UNEXPECTED failures on the mount only:"
    printf '%s\n' "$unexpected"
    return 1
  fi
  echo "no unexpected failure on the mount"
  mountpoint -q "$out/run/mnt" 2>/dev/null || rm -rf "$out"
}

main() {
  trap on_signal INT TERM
  [ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d;s/^# \{0,1\}//'; exit 2; }
  local cmd=$1; shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    run) cmd_run "$@" ;;
    compare) cmd_compare "$@" ;;
    compare-bindfs) cmd_compare_bindfs "$@" ;;
    compare-passthrough) cmd_compare_passthrough "$@" ;;
    compare-sluice) cmd_compare_sluice "$@" ;;
    ci) cmd_ci "$@" ;;
    *) die "unknown command '$cmd' (install, run, compare, compare-bindfs, compare-passthrough, compare-sluice, ci)" ;;
  esac
}

main "$@"
