#!/usr/bin/env bash
# A local trial: the sandbox simulators (demo data), kashforce connected to them, a job-queue
# worker and the web server. Ctrl-C (or SIGTERM to make's process group) stops everything.
#
# Ports: the web server's is the second argument (make run PORT=...); the simulators' are
# SANDBOX_SALESFORCE_PORT (8443) and SANDBOX_KASHFLOW_PORT (8080); the mail sink's is
# KASHFORCE_MAIL_SINK_PORT (8025).
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
PY=${KASHFORCE_PYTHON:-.venv/bin/python}
STATE_DIR=${KASHFORCE_SANDBOX_DIR:-var/sandbox}
SF_PORT=${SANDBOX_SALESFORCE_PORT:-8443}
KF_PORT=${SANDBOX_KASHFLOW_PORT:-8080}
MAIL_PORT=${KASHFORCE_MAIL_SINK_PORT:-8025}
# How long the job-queue worker may take to finish its task before it is killed.
STOP_SECONDS=${KASHFORCE_STOP_SECONDS:-10}

# Each child runs in a session of its own (setsid), so a signal to make's process group reaches
# only this script, which stops the children in order: the web server, the worker, the mail
# sink, the simulators. django-q2's cluster must get SIGTERM on its master only: workers that
# get it too die mid-task and leave the master waiting for ever (docs on django-q2 #66).
pids=()
stopping=""
stop() {
  [ -n "$stopping" ] && return 0
  stopping=1
  [ ${#pids[@]} = 0 ] && return 0
  trap '' INT TERM
  local pid i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  for _ in $(seq 1 $((STOP_SECONDS * 5))); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "Stopping process $pid took over ${STOP_SECONDS} s: killing it." >&2
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true  # its whole session (the worker's children too)
  done
  wait 2>/dev/null || true
  echo "kashforce stopped."
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

port_free() {
  "$PY" -c 'import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)' "$1" "$2"
}
need_port() {  # need_port PORT "what" VARIABLE HOST
  if ! port_free "$4" "$1"; then
    echo "Port $1 on $4 is already in use, so $2 cannot start there." >&2
    echo "Stop what uses it, or choose another port: make run $3=<port>" >&2
    exit 1
  fi
}
need_port "$PORT" "the web server" PORT "$HOST"
need_port "$SF_PORT" "the Salesforce simulator" SANDBOX_SALESFORCE_PORT 127.0.0.1
need_port "$KF_PORT" "the KashFlow simulator" SANDBOX_KASHFLOW_PORT 127.0.0.1
need_port "$MAIL_PORT" "the mail sink" KASHFORCE_MAIL_SINK_PORT 127.0.0.1

setsid "$PY" manage.py sandbox --state-dir "$STATE_DIR" --seed demo \
  --salesforce-port "$SF_PORT" --kashflow-port "$KF_PORT" &
pids+=($!)
for _ in $(seq 1 60); do
  "$PY" manage.py sandbox --info --state-dir "$STATE_DIR" >/dev/null 2>&1 && break
  if ! kill -0 "${pids[0]}" 2>/dev/null; then
    echo "The sandbox simulators did not start (see the message above)." >&2
    exit 1
  fi
  sleep 0.5
done
"$PY" manage.py sandbox_connect --state-dir "$STATE_DIR" --webhook-base "http://$HOST:$PORT"

# Alert mails go to a local mail server that keeps them (a Maildir) instead of passing them
# on; the Alerts page shows them. Every kind of alert goes to one demo address.
MAIL_DIR=${KASHFORCE_MAIL_SINK_DIR:-var/mail}
mkdir -p "$(dirname "$MAIL_DIR")"  # the sink makes the Maildir itself
setsid "$PY" -m aiosmtpd -n -l "127.0.0.1:$MAIL_PORT" -c aiosmtpd.handlers.Mailbox "$MAIL_DIR" &
pids+=($!)
export EMAIL_URL=${EMAIL_URL:-smtp://127.0.0.1:$MAIL_PORT}
export KASHFORCE_MAIL_SINK_DIR="$MAIL_DIR"
export KASHFORCE_ALERTS_TO=${KASHFORCE_ALERTS_TO:-finance@example.co.uk}
export KASHFORCE_BASE_URL=${KASHFORCE_BASE_URL:-http://$HOST:$PORT}

setsid "$PY" manage.py qcluster &
pids+=($!)

echo
echo "kashforce is at http://$HOST:$PORT/  (sign in with a user printed above)"
echo "alert mails it sends are shown at http://$HOST:$PORT/alerts/mail/"
echo "Ctrl-C stops everything."
echo
setsid "$PY" manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
# Until one of them ends (or a signal arrives): then stop the others.
wait -n || true
