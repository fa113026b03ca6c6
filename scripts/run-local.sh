#!/usr/bin/env bash
# Serve kashforce locally with a job queue worker beside it; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
PY=.venv/bin/python

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

$PY manage.py qcluster &
pids+=($!)

echo
echo "kashforce is at http://$HOST:$PORT/  (sign in with a user printed above)"
echo
$PY manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
wait -n
