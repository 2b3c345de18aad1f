#!/usr/bin/env bash
# A throwaway Redis Cluster on loopback, for CI and the tests (Debian's redis-server and redis-cli):
#
#   scripts/redis-cluster.sh start DIR PORT...   one master per port (3 or more), no replicas, no persistence;
#                                                returns once every node reports cluster_state:ok
#   scripts/redis-cluster.sh stop DIR            stops the nodes started in DIR (by their pid files only)
#
# Each node also uses PORT+10000 (the cluster bus). Nothing is written outside DIR.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR PORT... | stop DIR" >&2
  exit 2
}

# How long a node may take to answer, and the cluster to agree, in seconds.
WAIT_S=${REDIS_CLUSTER_WAIT_S:-30}

start() {
  local dir=$1
  shift
  (($# >= 3)) || { echo "$0: a cluster needs 3 or more masters, got $# port(s)" >&2; exit 2; }
  mkdir -p "$dir"
  local port nodes=()
  for port in "$@"; do
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
      --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
      --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" --cluster-node-timeout 5000 \
      --save "" --appendonly no --maxmemory-policy noeviction
    nodes+=("127.0.0.1:$port")
  done
  for port in "$@"; do
    wait_until "node $port answers" redis-cli -p "$port" ping
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 || {
    cat "$dir/create.log" >&2
    return 1
  }
  for port in "$@"; do
    wait_until "node $port reports cluster_state:ok" cluster_ok "$port"
  done
}

cluster_ok() { redis-cli -p "$1" cluster info | grep -q '^cluster_state:ok'; }

wait_until() {
  local what=$1
  shift
  for ((i = 0; i < WAIT_S * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$0: $what: not after ${WAIT_S}s" >&2
  return 1
}

stop() {
  local dir=$1 pidfile pid
  for pidfile in "$dir"/*/redis.pid; do
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -f "$pidfile"
  done
}

case ${1:-} in
  start) (($# >= 2)) || usage; shift; start "$@" ;;
  stop) (($# == 2)) || usage; stop "$2" ;;
  *) usage ;;
esac
