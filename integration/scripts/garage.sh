#!/usr/bin/env bash
# Single-node Garage 2.5 S3 server on loopback, for tests.
#   garage.sh install     build garage 2.5.0 with cargo if it is not there yet
#   garage.sh start DIR   configure and start a node in DIR, create a bucket and
#                         a key, write DIR/env.sh (source it) and print its path
#   garage.sh stop DIR    stop the node started in DIR (DIR is left in place)
#   garage.sh restart DIR start the stopped node of DIR again: same data, ports,
#                         bucket and key
# Env: SLUICE_TEST_BUCKET (default sluice-test), GARAGE_BIN (explicit binary),
# GARAGE_NO_BUILD=1 (install only checks, never builds).
set -euo pipefail

GARAGE_VERSION=2.5.0

log() { printf '[garage] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Prints the path of a garage binary of the right version, or fails.
find_garage() {
  local c
  for c in "${GARAGE_BIN:-}" "$(command -v garage 2>/dev/null || true)" "$HOME/.cargo/bin/garage"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    # cargo builds print "garage cargo:2.5.0 [...]", release builds "garage v2.5.0 [...]"
    [[ $("$c" --version 2>/dev/null || true) =~ [:v\ ]${GARAGE_VERSION//./\\.}([^0-9.]|$) ]] &&
      { echo "$c"; return 0; }
  done
  return 1
}

cmd_install() {
  local bin
  if bin=$(find_garage); then log "ok: $bin ($("$bin" --version | head -n1))"; return 0; fi
  [ -z "${GARAGE_NO_BUILD:-}" ] || die "garage $GARAGE_VERSION not found (GARAGE_NO_BUILD is set)"
  log "cargo install garage --locked --version $GARAGE_VERSION (takes ~11 min on 2 cores)"
  nice cargo install garage --locked --version "$GARAGE_VERSION"
  bin=$(find_garage) || die "garage $GARAGE_VERSION still not found after cargo install"
  log "ok: $bin ($("$bin" --version | head -n1))"
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
    sleep 0.5
  done
}

pid_alive() { [ -f "$1/garage.pid" ] && kill -0 "$(cat "$1/garage.pid")" 2>/dev/null; }

cmd_start() {
  [ $# -eq 1 ] || die "usage: garage.sh start DIR"
  local dir=$1
  local bin bucket rpc_port s3_port secret node_id key_out key_id key_secret
  bin=$(find_garage) || die "garage $GARAGE_VERSION not found; run: $0 install"
  bucket=${SLUICE_TEST_BUCKET:-sluice-test}
  mkdir -p "$dir/meta" "$dir/data"
  dir=$(cd "$dir" && pwd)
  [ ! -e "$dir/garage.toml" ] || die "$dir already holds a garage node; give a fresh directory"

  read -r rpc_port s3_port < <(free_ports 2)
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  local cfg="$dir/garage.toml"
  (umask 077; cat >"$cfg" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$secret"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "garage"
EOF
  )
  g() { "$bin" -c "$cfg" "$@"; }

  log "starting garage server (rpc 127.0.0.1:$rpc_port, s3 127.0.0.1:$s3_port); log: $dir/garage.log"
  # Any failure from here on stops the server again instead of leaking it.
  trap "cmd_stop $(printf %q "$dir") || true" EXIT
  launch "$bin" "$dir"

  node_id=$(g node id -q) || die "garage node id failed"
  node_id=${node_id%%@*}
  g layout assign -z dc1 -c 1G "$node_id" >/dev/null || die "layout assign failed"
  g layout apply --version 1 >/dev/null || die "layout apply failed"
  # The layout takes effect asynchronously; retry bucket creation briefly.
  wait_for 30 g bucket create "$bucket" || die "could not create bucket $bucket"

  key_out=$(g key create "sluice-test-key") || die "garage key create failed"
  key_id=$(awk -F': *' '/^Key ID:/ {print $2; exit}' <<<"$key_out")
  key_secret=$(awk -F': *' '/^Secret key:/ {print $2; exit}' <<<"$key_out")
  [[ $key_id =~ ^GK[0-9a-f]+$ && $key_secret =~ ^[0-9a-f]{64}$ ]] ||
    die "could not parse key id/secret from 'garage key create' output: $key_out"
  g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null || die "bucket allow failed"

  (umask 077; cat >"$dir/env.sh" <<EOF
export SLUICE_S3_ENDPOINT=http://127.0.0.1:$s3_port
export SLUICE_S3_REGION=garage
export SLUICE_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=garage
unset AWS_CA_BUNDLE
EOF
  )
  trap - EXIT
  log "ready: bucket $bucket at http://127.0.0.1:$s3_port (pid $(cat "$dir/garage.pid"))"
  echo "$dir/env.sh"
}

# launch BIN DIR: starts the server of DIR/garage.toml in the background and
# waits (bounded) until it answers RPC and S3.
launch() {
  local bin=$1 dir=$2 cfg=$2/garage.toml s3_port
  s3_port=$(awk -F'[:"]' '/^api_bind_addr/ {print $(NF-1); exit}' "$cfg")
  RUST_LOG=${RUST_LOG:-garage=info} nohup "$bin" -c "$cfg" server >>"$dir/garage.log" 2>&1 </dev/null &
  echo $! >"$dir/garage.pid"
  s3_up() { python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$s3_port"; }
  ready() { pid_alive "$dir" || return 0; "$bin" -c "$cfg" node id -q && s3_up; }  # returns early if it died
  wait_for 30 ready || die "garage did not answer within 30 s; see $dir/garage.log"
  pid_alive "$dir" || { tail -n 20 "$dir/garage.log" >&2; die "garage server exited; see $dir/garage.log"; }
}

# Starts the node of DIR again after a stop: same config, data, ports, bucket
# and key (DIR/env.sh stays valid).
cmd_restart() {
  [ $# -eq 1 ] || die "usage: garage.sh restart DIR"
  local dir bin
  dir=$(cd "$1" && pwd)
  bin=$(find_garage) || die "garage $GARAGE_VERSION not found; run: $0 install"
  [ -f "$dir/garage.toml" ] || die "$dir holds no garage node; use: $0 start DIR"
  ! pid_alive "$dir" || die "the node in $dir is already running (pid $(cat "$dir/garage.pid"))"
  launch "$bin" "$dir"
  log "restarted: http://127.0.0.1:$(awk -F'[:"]' '/^api_bind_addr/ {print $(NF-1); exit}' "$dir/garage.toml") (pid $(cat "$dir/garage.pid"))"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: garage.sh stop DIR"
  local dir=$1
  [ -f "$dir/garage.pid" ] || { log "not running (no $dir/garage.pid)"; return 0; }
  local pid; pid=$(cat "$dir/garage.pid")
  if ! kill -0 "$pid" 2>/dev/null; then log "not running (pid $pid)"; rm -f "$dir/garage.pid"; return 0; fi
  grep -q garage "/proc/$pid/cmdline" 2>/dev/null || die "pid $pid is not a garage process; not killing it"
  kill -TERM "$pid"
  if ! wait_for 10 bash -c "! kill -0 $pid"; then
    log "still running after 10 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 bash -c "! kill -0 $pid" || die "pid $pid survived KILL"
  fi
  rm -f "$dir/garage.pid"
  log "stopped (pid $pid)"
}

# Sourced (by garage-cluster.sh) for its functions only.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  *) echo "usage: $0 install | start DIR | stop DIR | restart DIR" >&2; exit 2 ;;
esac
