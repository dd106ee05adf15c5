#!/usr/bin/env bash
# A Dask cluster on this machine in one command: a scheduler and N workers (one thread each),
# started with the environment geoflow's own LocalCluster gives its workers (GDAL's block cache
# and remote-read options, quiet profiling and ticks). geoflow registers its worker plugin
# itself when a run connects, so nothing is preloaded.
#
#   deploy/local/cluster.sh [start] [--workers N] [--gpu-workers M] [--port P] [--host H]
#                           [--dir DIR] [--timeout S]
#   deploy/local/cluster.sh stop [--dir DIR]
#
# start (the default) runs in the foreground: it prints the scheduler's address once every
# worker has joined, and stops everything it started on Ctrl-C, SIGTERM or `cluster.sh stop`.
#   --workers N       CPU workers (default: the machine's cores, at most 8)
#   --gpu-workers M   GPU workers besides them, worker i seeing GPU i (CUDA_VISIBLE_DEVICES)
#                     and advertising the Dask resource GPU=1 (default 0)
#   --port P          scheduler port (default 8786; 0 picks a free one)
#   --host H          address to listen on (default 127.0.0.1: this machine only)
#   --dir DIR         state: DIR/scheduler.json (the address, for --scheduler-file), and a
#                     working directory with the log of each process (DIR/scheduler,
#                     DIR/worker-cpu-0, ...) (default ${TMPDIR:-/tmp}/geoflow-cluster-UID)
#   --timeout S       how long to wait for the workers to join (default 60)
# PYTHON (default: the checkout's .venv/bin/python) and DASK (default: the dask next to it)
# choose the environment.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
PYTHON=${PYTHON:-$root/.venv/bin/python}
DASK=${DASK:-$(dirname "$PYTHON")/dask}

cmd=start
if [[ ${1:-} == start || ${1:-} == stop ]]; then cmd=$1; shift; fi
cores=$(nproc 2>/dev/null || echo 1)
workers=$((cores < 8 ? cores : 8)) gpu_workers=0 port=8786 host=127.0.0.1 timeout=60
dir=${TMPDIR:-/tmp}/geoflow-cluster-$(id -u)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
fail() { echo "cluster.sh: $1" >&2; exit "${2:-1}"; }
while (($#)); do
  case "$1" in
    --workers) workers=${2-} ;;
    --gpu-workers) gpu_workers=${2-} ;;
    --port) port=${2-} ;;
    --host) host=${2-} ;;
    --dir) dir=${2-} ;;
    --timeout) timeout=${2-} ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" 2 ;;
  esac
  [[ -n ${2-} ]] || fail "$1 needs a value" 2
  shift 2
done
for v in workers gpu_workers port timeout; do
  [[ ${!v} =~ ^[0-9]+$ ]] || fail "--${v/_/-} must be a whole number, not '${!v}'" 2
done
((workers + gpu_workers > 0)) || fail "no workers to start (--workers 0 --gpu-workers 0)" 2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile=$dir/cluster.pid groups=$dir/process-groups scheduler_file=$dir/scheduler.json

# Whether a process runs (a zombie, exited but not yet reaped by its parent, does not).
alive() {
  local stat
  if [[ -d /proc/1 ]]; then
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

# Each process was started as the leader of its own process group (setsid): signalling the
# group reaches what it started too (a nanny's worker process).
stop_groups() {  # PGID... ; TERM, then KILL what is left after 15 s
  local g deadline=$((SECONDS + 15))
  for g in "$@"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for g in "$@"; do
    while kill -0 -- "-$g" 2>/dev/null; do
      if ((SECONDS >= deadline)); then kill -KILL -- "-$g" 2>/dev/null || true; break; fi
      sleep 0.1
    done
  done
}

if [[ $cmd == stop ]]; then
  if [[ -f $pidfile ]]; then
    pid=$(<"$pidfile")
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 40))
      while [[ -f $pidfile ]] && alive "$pid"; do
        ((SECONDS < deadline)) || { kill -KILL "$pid" 2>/dev/null || true; break; }
        sleep 0.1
      done
    fi
  fi
  # Whatever a supervisor killed before it could clean up had started.
  if [[ -f $groups ]]; then
    mapfile -t left <"$groups"
    ((${#left[@]})) && stop_groups "${left[@]}"
  fi
  rm -f "$pidfile" "$groups" "$scheduler_file"
  echo "cluster.sh: stopped ($dir)" >&2
  exit 0
fi

if [[ -f $pidfile ]] && alive "$(<"$pidfile")"; then
  fail "a cluster already runs from $dir (pid $(<"$pidfile")): stop it with '$0 stop --dir $dir'"
fi
[[ -x $DASK ]] || fail "no dask command at $DASK: run deploy/local/setup.sh, or set PYTHON or DASK"
command -v setsid >/dev/null || fail "setsid (util-linux) is needed"

# The environment of geoflow's LocalCluster: WORKER_ENV, the GDAL settings of the default
# retry policy, and its Dask settings as DASK_* variables (which Dask reads at start).
env_lines=$("$PYTHON" -c '
from geoflow._cluster import LOCAL_CLUSTER_CONFIG, WORKER_ENV, gdal_settings
env = {**WORKER_ENV, **gdal_settings()}
for key, value in LOCAL_CLUSTER_CONFIG.items():
    env["DASK_" + key.upper().replace(".", "__").replace("-", "_")] = str(value)
print("\n".join(f"{k}={v}" for k, v in env.items()))
') || fail "cannot read geoflow's worker settings with $PYTHON"
mapfile -t cluster_env <<<"$env_lines"

echo $$ >"$pidfile"
: >"$groups"
rm -f "$scheduler_file"
names=() pids=() sleeper=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
  # Workers first: a scheduler that goes first leaves them retrying to reach it.
  ((${#pids[@]} > 1)) && stop_groups "${pids[@]:1}"
  ((${#pids[@]})) && stop_groups "${pids[0]}"
  wait 2>/dev/null || true
  rm -f "$scheduler_file" "$groups" "$dir/address" "$dir/wait.log" "$pidfile"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 0' INT TERM  # asked to stop: the EXIT trap stops everything, and that is success

# NAME [VAR=VALUE...] -- COMMAND...: in its own working directory DIR/NAME, logging there.
start() {
  local name=$1 extra=()
  shift
  while [[ $1 != -- ]]; do extra+=("$1"); shift; done
  shift
  mkdir -p "$dir/$name"
  (cd "$dir/$name" && exec env "${cluster_env[@]}" "${extra[@]}" setsid "$@") \
    >"$dir/$name/$name.log" 2>&1 </dev/null &
  names+=("$name") pids+=("$!")
  echo "$!" >>"$groups"
}

gone() {  # NAME: a process of the cluster exited; say where its log is, and stop
  echo "cluster.sh: $1 exited; its log, $dir/$1/$1.log, ends with:" >&2
  tail -n 15 "$dir/$1/$1.log" | sed 's/^/  /' >&2
  exit 1
}

if [[ $port == 0 ]]; then dashboard=$host:0; else dashboard=$host:8787; fi
start scheduler -- "$DASK" scheduler --host "$host" --port "$port" \
  --scheduler-file "$scheduler_file" --dashboard-address "$dashboard"
deadline=$((SECONDS + timeout))
until [[ -s $scheduler_file ]]; do
  alive "${pids[0]}" || gone scheduler
  ((SECONDS < deadline)) || fail "the scheduler did not start within ${timeout} s; see $dir/scheduler/scheduler.log"
  sleep 0.1
done

worker_host=()
[[ $host != 0.0.0.0 ]] && worker_host=(--host "$host")
worker=("$DASK" worker --scheduler-file "$scheduler_file" --nthreads 1 --no-dashboard
        "${worker_host[@]}")
for ((i = 0; i < workers; i++)); do
  start "worker-cpu-$i" -- "${worker[@]}" --name "cpu-$i" --local-directory "$dir/worker-cpu-$i"
done
for ((i = 0; i < gpu_workers; i++)); do
  start "worker-gpu-$i" CUDA_VISIBLE_DEVICES="$i" -- "${worker[@]}" --name "gpu-$i" \
    --local-directory "$dir/worker-gpu-$i" --resources GPU=1
done

# Wait for every worker to join (bounded), noticing a process that exits meanwhile.
n=$((workers + gpu_workers))
"$PYTHON" - "$scheduler_file" "$n" "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))" \
  >"$dir/address" 2>"$dir/wait.log" <<'EOF' &
import sys
from distributed import Client

path, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Client(scheduler_file=path, timeout=timeout) as client:
    client.wait_for_workers(n, timeout=timeout)
    print(client.scheduler.address)
EOF
waiter=$!
while alive "$waiter"; do
  for i in "${!pids[@]}"; do alive "${pids[$i]}" || gone "${names[$i]}"; done
  sleep 0.1
done
if ! wait "$waiter"; then
  echo "cluster.sh: not all $n workers joined within ${timeout} s:" >&2
  tail -n 3 "$dir/wait.log" | sed 's/^/  /' >&2
  echo "  logs: $dir/*/*.log" >&2
  exit 1
fi
address=$(<"$dir/address")

echo "$address"
cat >&2 <<EOF
cluster.sh: scheduler $address with $workers CPU and $gpu_workers GPU workers
  scheduler file: $scheduler_file    logs: $dir/*/*.log
  use it:  geoflow classify ... --scheduler $address   or   Client("$address")
  stop it: Ctrl-C, or $0 stop --dir $dir
EOF

# Supervise: a process that exits takes the cluster down with it, and says why.
while true; do
  for i in "${!pids[@]}"; do alive "${pids[$i]}" || gone "${names[$i]}"; done
  sleep 1 &
  sleeper=$!
  wait "$sleeper" || true
  sleeper=""
done
