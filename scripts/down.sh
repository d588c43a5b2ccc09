#!/usr/bin/env bash
# Stop the standalone suite: supervisord (and the services), then RabbitMQ and MariaDB.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${HTMENGINE_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
PIDFILE=$ROOT/var/supervisord.pid
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  pid=$(cat "$PIDFILE")
  echo "[down] stopping supervisord (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
fi
bash "$ROOT/scripts/servers.sh" stop
