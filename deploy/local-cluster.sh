#!/usr/bin/env bash
# A region-vqa cluster on this machine's loopback: redis-server, N replicas of `region-vqa serve` (the
# bundled model unless other serve flags are given after `--`) sharing it, and HAProxy in front
# (deploy/haproxy.cfg). Prints the URL once every replica is ready; SIGINT / SIGTERM (Ctrl-C) stops
# everything it started.
#
#   bash deploy/local-cluster.sh --replicas 2 --port 8080 [--redis-port N] [--state-dir DIR]
#                                [--ready-timeout S] [-- <extra serve flags>]
#
# Ports: the load balancer on --port, replica i on --port + i, Redis on --redis-port (default
# --port + replicas + 1). The state folder (a temporary one unless --state-dir) holds each process's
# log and pid file: redis.pid, haproxy.pid, replica-<i>.pid / .port / .log.
set -euo pipefail
cd "$(dirname "$0")/.."

replicas=2
port=8080
redis_port=""
state_dir=""
ready_timeout=300
serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --redis-port) redis_port=$2; shift 2 ;;
    --state-dir) state_dir=$2; shift 2 ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --) shift; serve_args=("$@"); break ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "local-cluster: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$replicas" =~ ^[1-9][0-9]*$ ]] || ! [[ "$port" =~ ^[0-9]+$ ]]; then
  echo "local-cluster: --replicas must be >= 1 and --port a number" >&2
  exit 2
fi
redis_port=${redis_port:-$((port + replicas + 1))}

# The load balancer and Redis come from Debian's packages (nginx works too: deploy/nginx.conf).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "local-cluster: installing ${missing[*]} (Debian packages)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "local-cluster: needs ${missing[*]}; install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
if [ ! -f dist/cli/index.js ]; then
  echo "local-cluster: dist/ is missing; run 'bash scripts/setup.sh' (or npm run build) first" >&2
  exit 1
fi

if [ -z "$state_dir" ]; then
  state_dir=$(mktemp -d -t region-vqa-cluster.XXXXXX)
  remove_state=1
else
  mkdir -p "$state_dir"
  remove_state=0
fi

pids=()
stopping=0
cleanup() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap - INT TERM EXIT
  # Replicas first (they finish in-flight answers and write their last transcripts), then the rest.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$remove_state" = 1 ] && rm -rf "$state_dir"
  echo "local-cluster: stopped" >&2
}
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap cleanup EXIT

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --maxmemory 256mb --maxmemory-policy allkeys-lru --daemonize no \
  >"$state_dir/redis.log" 2>&1 &
pids+=($!)
echo $! >"$state_dir/redis.pid"

for i in $(seq 1 "$replicas"); do
  replica_port=$((port + i))
  REGION_VQA_LLM_THREADS=${REGION_VQA_LLM_THREADS:-1} REGION_VQA_THREADS=${REGION_VQA_THREADS:-1} \
    node bin/region-vqa.js serve --host 127.0.0.1 --port "$replica_port" \
    --redis "redis://127.0.0.1:$redis_port" --replica-name "replica-$i" ${serve_args[@]+"${serve_args[@]}"} \
    >"$state_dir/replica-$i.log" 2>&1 &
  pids+=($!)
  echo $! >"$state_dir/replica-$i.pid"
  echo "$replica_port" >"$state_dir/replica-$i.port"
done

# deploy/haproxy.cfg with this cluster's listen address and servers between its markers.
servers=""
for i in $(seq 1 "$replicas"); do
  servers+="    server replica-$i 127.0.0.1:$((port + i))"$'\n'
done
awk -v bind="    bind 127.0.0.1:$port" -v servers="$servers" '
  /# BEGIN bind/ { print; print bind; skip = 1; next }
  /# BEGIN servers/ { print; printf "%s", servers; skip = 1; next }
  /# END / { skip = 0 }
  !skip { print }
' deploy/haproxy.cfg >"$state_dir/haproxy.cfg"
haproxy -db -f "$state_dir/haproxy.cfg" >"$state_dir/haproxy.log" 2>&1 &
pids+=($!)
echo $! >"$state_dir/haproxy.pid"

# Ready when every replica's /readyz answers 200 and the load balancer passes requests.
deadline=$((SECONDS + ready_timeout))
for i in $(seq 1 "$replicas"); do
  until curl -fsS -o /dev/null "http://127.0.0.1:$((port + i))/readyz" 2>/dev/null; do
    if ! kill -0 "$(cat "$state_dir/replica-$i.pid")" 2>/dev/null; then
      echo "local-cluster: replica $i exited; its log:" >&2
      tail -n 20 "$state_dir/replica-$i.log" >&2
      exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "local-cluster: replica $i not ready after ${ready_timeout} s (log: $state_dir/replica-$i.log)" >&2
      exit 1
    fi
    sleep 0.5
  done
done
until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
  if [ $SECONDS -ge $deadline ]; then
    echo "local-cluster: the load balancer does not answer (log: $state_dir/haproxy.log)" >&2
    exit 1
  fi
  sleep 0.2
done

echo "region-vqa cluster ready: http://127.0.0.1:$port ($replicas replicas, redis 127.0.0.1:$redis_port, state $state_dir)"
# Wait in short sleeps so that a signal is handled at once.
while true; do
  sleep 1 &
  wait $! || true
done
