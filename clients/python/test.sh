#!/usr/bin/env bash
# Runs the Python publisher's tests (unit + end-to-end against a real
# redis-server and nginx with the module + Redis Cluster mode against a real
# three-master cluster) in clients/python/.venv.
#
# The virtualenv is created on first use and the package installed into it
# (editable, with its test extra, from PyPI); it is installed again only when
# pyproject.toml, hatch_build.py or redis/sse.lua changed since (the install
# runs the build hook that copies redis/sse.lua into the package).
# Arguments go to pytest (e.g. `bash test.sh -k unit`). Environment:
# PYTHON (default python3), NGINX_BIN, SSE_MODULE, REDIS_BIN, REDIS_CLI.
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
stamp=$venv/.installed
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv" || {
    echo "cannot create $PWD/$venv (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ hatch_build.py -nt "$stamp" ] \
   || [ ../../redis/sse.lua -nt "$stamp" ] || [ ! -f src/nginx_sse/sse.lua ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
exec "$venv/bin/python" -m pytest -q "$@"
