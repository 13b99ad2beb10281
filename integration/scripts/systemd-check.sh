#!/usr/bin/env bash
# Checks the units in systemd/: `systemd-analyze verify` of every unit (the
# templates through an instance, the example drop-in through the example app
# unit), any warning counting as a failure; then the
# `systemd-analyze security --offline=true` exposure of each service, which
# must be 2.0 or lower ("OK") for sluice.service.
#   integration/scripts/systemd-check.sh
# Needs systemd-analyze (integration/scripts/install-deps.sh installs it). The
# units name /usr/local/bin/sluice, which verify requires to exist: they are
# checked from a copy pointing at a stub, so no install is needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 2; }
max_exposure=2.0
t=$(mktemp -d "${TMPDIR:-/tmp}/sluice-systemd.XXXXXX")
trap 'rm -rf "$t"' EXIT
mkdir "$t/bin" "$t/app.service.d"
printf '#!/bin/sh\nexit 0\n' >"$t/bin/sluice"
cp "$t/bin/sluice" "$t/bin/app"
chmod +x "$t/bin/sluice" "$t/bin/app"
for f in "$root"/systemd/*.service "$root"/systemd/*.timer "$root"/systemd/examples/app.service; do
  sed "s#/usr/local/bin/#$t/bin/#g" "$f" >"$t/$(basename "$f")"
done
cp "$root"/systemd/examples/app.service.d/*.conf "$t/app.service.d/"
[ -x /usr/bin/fusermount3 ] || sed -i "s#/usr/bin/fusermount3#$t/bin/sluice#" "$t/sluice-replica@.service"

units=(sluice.service sluice-drill.service sluice-drill.timer
  sluice-restore@var-lib-app-app.db.service sluice-replica@app.db.service app.service)
echo "verify: ${units[*]}"
out=$(cd "$t" && SYSTEMD_UNIT_PATH="$t:" systemd-analyze verify --man=no "${units[@]}" 2>&1) && rc=0 || rc=$?
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
  echo "$out"
  echo "FAIL: systemd-analyze verify (exit $rc, warnings count as failures)"
  exit 1
fi
echo "verify: ok"

fail=0
for u in sluice.service sluice-drill.service sluice-restore@.service sluice-replica@.service; do
  line=$(cd "$t" && systemd-analyze security --offline=true --no-pager "$t/$u" 2>&1 | grep 'Overall exposure level' || true)
  fig=$(sed -n 's/.*: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p' <<<"$line")
  [ -n "$fig" ] || { echo "security $u: no figure: $line"; fail=1; continue; }
  echo "security $u: exposure $fig"
  if [ "$u" = sluice.service ] && ! awk -v e="${fig%% *}" -v m="$max_exposure" 'BEGIN{exit !(e <= m)}'; then
    echo "FAIL: sluice.service exposure ${fig%% *} > $max_exposure"
    fail=1
  fi
done
[ "$fail" -eq 0 ] && echo PASS || { echo FAIL; exit 1; }
