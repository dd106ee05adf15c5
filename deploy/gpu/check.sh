#!/usr/bin/env bash
# GPU readiness check for geoflow, in one short command (well under 5 minutes on one GPU node).
#
#   deploy/gpu/check.sh                      # on a GPU node: CUDA, the student, the demo region
#   deploy/gpu/check.sh --device cpu --batch-sizes 64,256   # its CPU twin (what CI runs)
#
# 1. nvidia-smi and torch: a CUDA build of torch that sees the GPU (exit 2 if not);
# 2. `geoflow bench --device DEVICE --json`: the student on the device in fp32 / bf16 /
#    bf16+channels_last / bf16+torch.compile, patches/s for batch sizes 256..8192; the demo
#    region end to end on one GPU worker with N reader threads: e2e km²/s, GPU busy
#    fraction (NVML or nvidia-smi) and where the chunks' time went (read / infer / write).
# The sample archive is created (once) and served before the timed part. The JSON goes to
# stdout and, with --out FILE, to FILE. Options: --device (default cuda), --out FILE,
# --batch-sizes LIST, --read-threads N, --no-compile, --limit SECONDS (default 290: the
# bench is stopped if it runs longer; the stages that finished are still printed, with
# "stage" naming the last, and the script exits 124).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
device=cuda
out=""
limit=290
bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --limit) limit="$2"; shift 2 ;;
        --batch-sizes|--read-threads|--model) bench_args+=("$1" "$2"); shift 2 ;;
        --no-compile|--compile) bench_args+=("$1"); shift ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "check.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
done

# The repository's own code and virtual environment where there is one (a clone), else the
# python on PATH with geoflow installed.
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x "$here/.venv/bin/python" ]; then
    py="$here/.venv/bin/python"
else
    py="$(command -v python3 || command -v python)"
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "check.sh: $*" >&2; }

case "$device" in
    cuda*)
        if command -v nvidia-smi >/dev/null 2>&1; then
            nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu \
                --format=csv,noheader >&2 || log "nvidia-smi failed"
        else
            log "no nvidia-smi on PATH (the GPU busy fraction then needs pynvml)"
        fi
        ;;
esac

log "torch on $device"
if ! "$py" - "$device" >&2 <<'PY'
import sys
import torch
device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("no usable CUDA: install a CUDA build of torch and check the driver")
    print(torch.cuda.get_device_name(torch.device(device)),
          "bf16" if torch.cuda.is_bf16_supported() else "no bf16")
PY
then
    log "torch cannot use $device"
    exit 2
fi

# The sample archive before the clock starts: created once (under a minute), its server
# started here and stopped at exit (one already running is left running).
log "sample archive and its server"
started="$("$py" - <<'PY'
from geoflow.archive import default_archive_dir
from geoflow.archive.server import running_server
from geoflow.demo import ensure_archive
was_running = running_server(default_archive_dir()) is not None
ensure_archive(lambda msg: print(msg, file=__import__("sys").stderr))
print("no" if was_running else "yes")
PY
)"
stages="$(mktemp "${TMPDIR:-/tmp}/geoflow-gpu-check.XXXXXX")"
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    rm -f "$stages" "$(dirname "$stages")/.$(basename "$stages").tmp-"*
    if [ "$started" = yes ]; then
        "$py" -m geoflow.cli archive stop >/dev/null 2>&1 || log "could not stop the archive server"
    fi
}
trap cleanup EXIT

log "geoflow bench --device $device (limit ${limit} s)"
rc=0
timeout "$limit" "$py" -m geoflow.cli bench --device "$device" --json --stages "$stages" \
    ${bench_args[@]+"${bench_args[@]}"} >/dev/null || rc=$?
if [ "$rc" -eq 124 ]; then
    log "timed out after ${limit} s: the stages that finished follow (\"stage\" is the last)"
elif [ "$rc" -ne 0 ]; then
    log "geoflow bench --device $device failed (exit $rc)"
fi
if [ -s "$stages" ]; then
    cat "$stages"
    if [ -n "$out" ]; then
        cp "$stages" "$out"
        log "wrote $out"
    fi
fi
exit "$rc"
