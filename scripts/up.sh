#!/usr/bin/env bash
# Bring the whole standalone suite up on this machine: install what is missing (MariaDB, RabbitMQ,
# Python requirements), start MariaDB and RabbitMQ on loopback, create and migrate the database, then
# start supervisord with conf/supervisord.conf (all htmengine services). Idempotent.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"

bash "$ROOT/scripts/servers.sh" install
ensure_python
bash "$ROOT/scripts/servers.sh" start

export APPLICATION_CONFIG_PATH=${APPLICATION_CONFIG_PATH:-$ROOT/conf}
mkdir -p "$ROOT/logs" "$ROOT/var"
"$PY" -c "from htmengine.repository import migrate; migrate.upgrade()"

SUPERVISOR_CONF=$ROOT/conf/supervisord.conf
if "$PY" -m supervisor.supervisorctl -c "$SUPERVISOR_CONF" pid >/dev/null 2>&1; then
  echo "[up] supervisord already running; updating programs"
  "$PY" -m supervisor.supervisorctl -c "$SUPERVISOR_CONF" update >/dev/null
else
  echo "[up] starting supervisord"
  (cd "$ROOT" && "$PY" -m supervisor.supervisord -c "$SUPERVISOR_CONF")
fi
for _ in $(seq 1 60); do
  out=$("$PY" -m supervisor.supervisorctl -c "$SUPERVISOR_CONF" status 2>/dev/null || true)
  if [ -n "$out" ] && ! grep -qvE '\bRUNNING\b' <<<"$out"; then break; fi
  sleep 1
done
"$PY" -m supervisor.supervisorctl -c "$SUPERVISOR_CONF" status || true

cat <<TXT

htmengine is up (services log to $ROOT/logs/).
  Send a sample:    echo "cpu_percent 12.5 \$(date +%s)" | nc -q0 127.0.0.1 2003
  Query MySQL:      mariadb -h127.0.0.1 -uroot htmengine -e "SELECT * FROM metric_data ORDER BY rowid DESC LIMIT 5"
  Service status:   $PY -m supervisor.supervisorctl -c conf/supervisord.conf status
  Stop everything:  scripts/down.sh
TXT
