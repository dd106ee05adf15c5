#!/usr/bin/env bash
# What geoflow's environments install, and their versions: the one list. deploy/local/setup.sh
# runs this script for .venv and deploy/container/Dockerfile runs it for the image, so the two
# cannot drift (tests/deploy/test_recipes.py checks that both call it and install the same).
#
#   deploy/install.sh [--dev] [--editable] [--with-extra NAME]... [--step torch|project|all]
#                     [--dry-run] PYTHON PROJECT_DIR [PACKAGE...]
#
#   --dev          the test tools too: geoflow[dev] (which includes the runtime extras)
#   --editable     pip install -e (a checkout you work in)
#   --with-extra   one more geoflow extra, e.g. planetary-computer (repeatable)
#   --step         torch only, the project only, or both (the image installs torch in its own
#                  layer, so that a code change does not reinstall a multi-GB CUDA build)
#   --dry-run      print the pip commands, one a line, instead of running them
#   PACKAGE...     packages geoflow does not depend on (the image's dashboard, object stores)
#
# TORCH_INDEX_URL, when set, is the index torch comes from (the image picks CPU or a CUDA
# build there); the version is always TORCH_VERSION below.
set -euo pipefail

# The CPU wheel of torch first and pinned: a bare `torch` would pull a multi-GB CUDA build.
# geoflow itself only asks for torch>=2.3, so GPU users can pick their CUDA build.
TORCH_VERSION=2.13.0
# The runtime extras: the bundled STAC API (server) and COG export (cog).
RUNTIME_EXTRAS=server,cog
# geoflow[dev] includes geoflow[server,cog].
DEV_EXTRAS=dev

extras=$RUNTIME_EXTRAS editable=() step=all dry_run=0
while (($#)); do
  case "$1" in
    --dev) extras=$DEV_EXTRAS ;;
    --editable) editable=(-e) ;;
    --with-extra) extras+=",${2:?--with-extra needs a name}"; shift ;;
    --step) step=${2:?--step needs torch, project or all}; shift ;;
    --dry-run) dry_run=1 ;;
    --) shift; break ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
if (($# < 2)); then
  echo "usage: install.sh [options] PYTHON PROJECT_DIR [PACKAGE...]" >&2
  exit 2
fi
python=$1 project=$2
shift 2
case "$step" in torch|project|all) ;; *) echo "install.sh: bad --step $step" >&2; exit 2 ;; esac

run() {
  if ((dry_run)); then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

pip=("$python" -m pip install -q)
index=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && index=(--index-url "$TORCH_INDEX_URL")

if [[ $step != project ]]; then
  run "${pip[@]}" --upgrade pip
  run "${pip[@]}" "${index[@]}" "torch==${TORCH_VERSION}"
fi
if [[ $step != torch ]]; then
  # The tested versions as constraints: a fresh install resolves at once (without them pip
  # backtracked for minutes through aiobotocore's narrow botocore pins).
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  constraints=()
  [[ -f "$here/constraints.txt" ]] && constraints=(-c "$here/constraints.txt")
  run "${pip[@]}" "${constraints[@]}" "${editable[@]}" "${project}[${extras}]" "$@"
fi
