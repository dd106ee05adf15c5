#!/usr/bin/env bash
# Sets geoflow up on a fresh Debian machine with Python 3.11: PostgreSQL + PostGIS for the
# bundled STAC API (apt), a virtual environment in .venv with the CPU build of torch and
# geoflow itself. Idempotent: a second run only checks. `--dev` adds the test tools.
set -euo pipefail
cd "$(dirname "$0")/../.."

dev=()
[[ "${1:-}" == "--dev" ]] && dev=(--dev)

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 || need_apt+=(postgis)
if ((${#need_apt[@]})); then
  sudo=""; [[ "$(id -u)" != 0 ]] && sudo="sudo"
  echo "setup: installing PostgreSQL + PostGIS from Debian's packages" >&2
  $sudo apt-get update -qq
  # postgresql pulls the distribution's server; postgis its matching extension.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    postgresql postgresql-contrib "$(apt-cache depends postgresql | awk '/Depends: postgresql-[0-9]+$/{print $2; exit}')-postgis-3" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
# What is installed and its versions (the CPU wheel of torch==2.13.0 first, then geoflow with
# its extras) are in deploy/install.sh: the container image runs the same script.
bash deploy/install.sh "${dev[@]}" --editable .venv/bin/python .
echo "setup: done (.venv/bin/geoflow)" >&2
