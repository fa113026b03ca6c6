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

# Alert mails go to a local mail server that keeps them (a Maildir) instead of passing them
# on; the Alerts page shows them. Every kind of alert goes to one demo address.
MAIL_DIR=${KASHFORCE_MAIL_SINK_DIR:-var/mail}
MAIL_PORT=${KASHFORCE_MAIL_SINK_PORT:-8025}
mkdir -p "$(dirname "$MAIL_DIR")"  # the sink makes the Maildir itself
$PY -m aiosmtpd -n -l "127.0.0.1:$MAIL_PORT" -c aiosmtpd.handlers.Mailbox "$MAIL_DIR" &
pids+=($!)
export EMAIL_URL=${EMAIL_URL:-smtp://127.0.0.1:$MAIL_PORT}
export KASHFORCE_MAIL_SINK_DIR="$MAIL_DIR"
export KASHFORCE_ALERTS_TO=${KASHFORCE_ALERTS_TO:-finance@example.co.uk}
export KASHFORCE_BASE_URL=${KASHFORCE_BASE_URL:-http://$HOST:$PORT}

$PY manage.py qcluster &
pids+=($!)

echo
echo "kashforce is at http://$HOST:$PORT/  (sign in with a user printed above)"
echo "alert mails it sends are shown at http://$HOST:$PORT/alerts/mail/"
echo
$PY manage.py runserver "$HOST:$PORT" --noreload &
pids+=($!)
wait -n
