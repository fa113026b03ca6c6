#!/usr/bin/env bash
# A local trial: the sandbox simulators (demo data), kashforce connected to them, a job-queue
# worker and the web server. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
PY=.venv/bin/python
STATE_DIR=${KASHFORCE_SANDBOX_DIR:-var/sandbox}

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

$PY manage.py sandbox --state-dir "$STATE_DIR" --seed demo &
pids+=($!)
for _ in $(seq 1 60); do
  $PY manage.py sandbox --info --state-dir "$STATE_DIR" >/dev/null 2>&1 && break
  sleep 0.5
done
$PY manage.py sandbox_connect --state-dir "$STATE_DIR" --webhook-base "http://$HOST:$PORT"

$PY manage.py qcluster &
pids+=($!)

echo
echo "kashforce is at http://$HOST:$PORT/  (sign in with a user printed above)"
echo
$PY manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
wait -n
