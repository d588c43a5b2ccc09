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
# Servers on other than the default ports (HTMENGINE_MYSQL_PORT / HTMENGINE_AMQP_PORT, as servers.sh).
[ -z "${HTMENGINE_MYSQL_PORT:-}" ] || export _NTA_UTILS_CONFIG__APPLICATION__REPOSITORY__PORT=$HTMENGINE_MYSQL_PORT
[ -z "${HTMENGINE_AMQP_PORT:-}" ] || export _NTA_UTILS_CONFIG__RABBITMQ__CONNECTION__PORT=$HTMENGINE_AMQP_PORT
mkdir -p "$ROOT/logs" "$ROOT/var"
# Checkpoints (and the logs) are this user's only; supervisord's umask covers the files.
mkdir -p -m 0700 "$ROOT/var/model_checkpoints"
chmod 0700 "$ROOT/logs" "$ROOT/var/model_checkpoints"
"$PY" -c "from htmengine.repository import migrate; migrate.upgrade()"
# supervisord.conf expands its XML-RPC credentials from the environment (the local secrets file).
eval "$("$PY" -c 'import shlex
from htmengine.config import supervisor_environ
for name, value in supervisor_environ().items():
    print(f"export {name}={shlex.quote(value)}")')"

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
  Query MySQL:      mariadb --defaults-extra-file=$("$PY" -c 'from htmengine.config import local_secrets_path; print(local_secrets_path())') htmengine -e "SELECT * FROM metric_data ORDER BY rowid DESC LIMIT 5"
  Service status:   $PY -m supervisor.supervisorctl -c conf/supervisord.conf status
  Stop everything:  scripts/down.sh
TXT
