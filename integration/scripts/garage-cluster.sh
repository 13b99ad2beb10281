#!/usr/bin/env bash
# A 3-node Garage 2.5 cluster on loopback, for the fault harness: three
# `garage server` processes with their own directories and ports, one
# rpc_secret, replication_factor = 3, one layout (zones dc1, dc2, dc3).
#   garage-cluster.sh start DIR         configure and start nodes DIR/node1..3,
#                                       create a bucket and a key, write
#                                       DIR/env.sh (node 1's S3 endpoint in
#                                       SLUICE_S3_ENDPOINT, all three in
#                                       SLUICE_CLUSTER_ENDPOINTS) and print its path
#   garage-cluster.sh stop DIR          stop every node (DIR is left in place)
#   garage-cluster.sh kill-node N DIR   kill -9 node N (1..3): a crashed machine
#   garage-cluster.sh start-node N DIR  start node N again (same data and ports)
# Env: SLUICE_TEST_BUCKET (default sluice-test), GARAGE_BIN.
set -euo pipefail
# shellcheck source=garage.sh
. "$(dirname "$0")/garage.sh"
log() { printf '[garage-cluster] %s\n' "$*" >&2; }

node_dir() {
  [[ $1 =~ ^[123]$ ]] || die "node must be 1, 2 or 3, not '$1'"
  [ -f "$2/node$1/garage.toml" ] || die "$2 holds no cluster; use: $0 start DIR"
  echo "$2/node$1"
}

# write_node_config DIR RPC_PORT S3_PORT SECRET
write_node_config() {
  mkdir -p "$1/meta" "$1/data"
  (umask 077; cat >"$1/garage.toml" <<EOF
metadata_dir = "$1/meta"
data_dir = "$1/data"
db_engine = "sqlite"
replication_factor = 3

rpc_bind_addr = "127.0.0.1:$2"
rpc_public_addr = "127.0.0.1:$2"
rpc_secret = "$4"

[s3_api]
api_bind_addr = "127.0.0.1:$3"
s3_region = "garage"
EOF
  )
}

cmd_cluster_start() {
  [ $# -eq 1 ] || die "usage: garage-cluster.sh start DIR"
  local dir bin bucket secret ports n id key_out key_id key_secret endpoints=()
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  bin=$(find_garage) || die "garage $GARAGE_VERSION not found; run: garage.sh install"
  bucket=${SLUICE_TEST_BUCKET:-sluice-test}
  [ ! -e "$dir/node1" ] || die "$dir already holds a cluster; give a fresh directory"
  read -r -a ports < <(free_ports 6)
  secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
  # shellcheck disable=SC2064 # expand DIR now, as garage.sh does
  trap "cmd_cluster_stop $(printf %q "$dir") || true" EXIT
  for n in 1 2 3; do
    write_node_config "$dir/node$n" "${ports[$((2 * n - 2))]}" "${ports[$((2 * n - 1))]}" "$secret"
    endpoints+=("http://127.0.0.1:${ports[$((2 * n - 1))]}")
    log "starting node $n (rpc 127.0.0.1:${ports[$((2 * n - 2))]}, s3 ${endpoints[-1]}); log: $dir/node$n/garage.log"
    launch "$bin" "$dir/node$n"
  done
  g() { "$bin" -c "$dir/node1/garage.toml" "$@"; }
  for n in 2 3; do
    id=$("$bin" -c "$dir/node$n/garage.toml" node id -q) || die "node $n: node id failed"
    wait_for 30 g node connect "$id" || die "node 1 cannot connect to node $n ($id)"
  done
  for n in 1 2 3; do
    id=$("$bin" -c "$dir/node$n/garage.toml" node id -q)
    g layout assign -z "dc$n" -c 1G "${id%%@*}" >/dev/null || die "layout assign of node $n failed"
  done
  g layout apply --version 1 >/dev/null || die "layout apply failed"
  # The layout reaches every node asynchronously; retry bucket creation briefly.
  wait_for 60 g bucket create "$bucket" || die "could not create bucket $bucket"
  key_out=$(g key create "sluice-test-key") || die "garage key create failed"
  key_id=$(awk -F': *' '/^Key ID:/ {print $2; exit}' <<<"$key_out")
  key_secret=$(awk -F': *' '/^Secret key:/ {print $2; exit}' <<<"$key_out")
  [[ $key_id =~ ^GK[0-9a-f]+$ && $key_secret =~ ^[0-9a-f]{64}$ ]] ||
    die "could not parse key id/secret from 'garage key create' output: $key_out"
  g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null || die "bucket allow failed"
  (umask 077; cat >"$dir/env.sh" <<EOF
export SLUICE_S3_ENDPOINT=${endpoints[0]}
export SLUICE_CLUSTER_ENDPOINTS="${endpoints[*]}"
export SLUICE_S3_REGION=garage
export SLUICE_S3_BUCKET=$bucket
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=garage
unset AWS_CA_BUNDLE
EOF
  )
  trap - EXIT
  log "ready: 3 nodes, replication factor 3, bucket $bucket at ${endpoints[*]}"
  echo "$dir/env.sh"
}

cmd_cluster_stop() {
  [ $# -eq 1 ] || die "usage: garage-cluster.sh stop DIR"
  local n
  # Every node told first: a node whose peers are gone shuts down slowly.
  for n in 1 2 3; do
    ! pid_alive "$1/node$n" || kill -TERM "$(cat "$1/node$n/garage.pid")" 2>/dev/null || true
  done
  for n in 1 2 3; do
    [ -d "$1/node$n" ] || continue
    log "node $n:"
    cmd_stop "$1/node$n"
  done
}

cmd_kill_node() {
  [ $# -eq 2 ] || die "usage: garage-cluster.sh kill-node N DIR"
  local d pid
  d=$(node_dir "$1" "$2")
  pid_alive "$d" || die "node $1 is not running"
  pid=$(cat "$d/garage.pid")
  grep -q garage "/proc/$pid/cmdline" 2>/dev/null || die "pid $pid is not a garage process; not killing it"
  kill -KILL "$pid"
  wait_for 5 bash -c "! kill -0 $pid" || die "node $1 (pid $pid) survived KILL"
  rm -f "$d/garage.pid"
  log "killed node $1 (pid $pid) with SIGKILL"
}

cmd_start_node() {
  [ $# -eq 2 ] || die "usage: garage-cluster.sh start-node N DIR"
  local d bin
  d=$(node_dir "$1" "$2")
  ! pid_alive "$d" || die "node $1 is already running (pid $(cat "$d/garage.pid"))"
  bin=$(find_garage) || die "garage $GARAGE_VERSION not found; run: garage.sh install"
  local t0=$SECONDS
  launch "$bin" "$d"
  # A restarted node serves S3 before it has reconnected to its peers, and
  # answers 503 (no quorum) until then: wait (bounded) for all three.
  healthy() {
    [ "$("$bin" -c "$d/garage.toml" status 2>/dev/null |
      awk '/^==== / {s = $2} s == "HEALTHY" && /127\.0\.0\.1:/ {n++} END {print n + 0}')" -eq 3 ]
  }
  wait_for 60 healthy || die "node $1 did not see all three nodes healthy within 60 s"
  log "started node $1 again (pid $(cat "$d/garage.pid")); all 3 nodes healthy after $((SECONDS - t0)) s"
}

case "${1:-}" in
  start) shift; cmd_cluster_start "$@" ;;
  stop) shift; cmd_cluster_stop "$@" ;;
  kill-node) shift; cmd_kill_node "$@" ;;
  start-node) shift; cmd_start_node "$@" ;;
  *) echo "usage: $0 start DIR | stop DIR | kill-node N DIR | start-node N DIR" >&2; exit 2 ;;
esac
