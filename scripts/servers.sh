#!/usr/bin/env bash
# Install, start and stop the local MariaDB and RabbitMQ servers htmengine needs.
#
#   scripts/servers.sh install          apt-get install mariadb-server rabbitmq-server (if missing; root)
#   scripts/servers.sh start            initialise data under var/ (first time) and start both on 127.0.0.1
#   scripts/servers.sh stop             stop both
#   scripts/servers.sh restart-rabbitmq stop and start RabbitMQ only (tests use it)
#   scripts/servers.sh status           say what runs
#
# Servers run as plain background processes (no systemd), data and logs under $HTMENGINE_VAR
# (default: <repo>/var). Ports: $HTMENGINE_MYSQL_PORT (3306), $HTMENGINE_AMQP_PORT (5672).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=${HTMENGINE_VAR:-$ROOT/var}
MYSQL_PORT=${HTMENGINE_MYSQL_PORT:-3306}
AMQP_PORT=${HTMENGINE_AMQP_PORT:-5672}

MYSQL_DIR=$VAR/mysql
MYSQL_DATA=$MYSQL_DIR/data
MYSQL_SOCK=$MYSQL_DIR/mysqld.sock
MYSQL_PID=$MYSQL_DIR/mysqld.pid
MYSQL_LOG=$MYSQL_DIR/mysqld.log

RMQ_DIR=$VAR/rabbitmq
RMQ_PID=$RMQ_DIR/rabbit.pid

log() { echo "[servers] $*" >&2; }
die() { echo "[servers] ERROR: $*" >&2; exit 1; }

rmq_env() {
  export HOME=$RMQ_DIR/home
  export RABBITMQ_NODENAME=rabbit@localhost
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$AMQP_PORT
  export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
  export RABBITMQ_LOG_BASE=$RMQ_DIR/log
  export RABBITMQ_PID_FILE=$RMQ_PID
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

install() {
  local missing=()
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
  command -v nc >/dev/null 2>&1 || missing+=(netcat-openbsd)  # for the README's one-line examples
  if [ ${#missing[@]} -eq 0 ]; then
    log "MariaDB, RabbitMQ and nc already installed"
    return
  fi
  [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root (apt-get)"
  log "installing ${missing[*]} from Debian packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

mysql_start() {
  if pid_alive "$MYSQL_PID"; then log "MariaDB already running (pid $(cat "$MYSQL_PID"))"; return; fi
  mkdir -p "$MYSQL_DIR"
  if [ ! -d "$MYSQL_DATA/mysql" ]; then
    log "initialising MariaDB data in $MYSQL_DATA"
    mariadb-install-db --user="$(id -un)" --datadir="$MYSQL_DATA" \
      --auth-root-authentication-method=normal --skip-test-db >"$MYSQL_DIR/install.log" 2>&1 \
      || { cat "$MYSQL_DIR/install.log" >&2; die "mariadb-install-db failed"; }
  fi
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT"
  nohup mariadbd --no-defaults --user="$(id -un)" --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCK" \
    --pid-file="$MYSQL_PID" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve=0 \
    --log-error="$MYSQL_LOG" --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    --innodb-buffer-pool-size=512M --innodb-flush-log-at-trx-commit=1 --max-connections=500 \
    >/dev/null 2>&1 &
  for _ in $(seq 1 100); do
    if mariadb-admin --socket="$MYSQL_SOCK" -uroot ping >/dev/null 2>&1; then
      log "MariaDB ready"; return
    fi
    sleep 0.2
  done
  tail -20 "$MYSQL_LOG" >&2 || true
  die "MariaDB did not answer within 20 s (log: $MYSQL_LOG)"
}

mysql_stop() {
  if pid_alive "$MYSQL_PID"; then
    local pid; pid=$(cat "$MYSQL_PID")
    log "stopping MariaDB (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

rmq_start() {
  rmq_env
  if pid_alive "$RMQ_PID"; then log "RabbitMQ already running (pid $(cat "$RMQ_PID"))"; return; fi
  mkdir -p "$HOME" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  [ -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ] || echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  # Loopback only; allow the guest user from 127.0.0.1 (its default); larger frame for batches.
  cat >"$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
CONF
  log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT"
  nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$RMQ_DIR/server.out" 2>&1 &
  sleep 1
  if ! /usr/lib/rabbitmq/bin/rabbitmqctl wait --timeout 120 "$RMQ_PID" >/dev/null 2>&1; then
    tail -30 "$RMQ_DIR/server.out" >&2 || true
    die "RabbitMQ did not start (see $RMQ_DIR/server.out and $RABBITMQ_LOG_BASE)"
  fi
  /usr/lib/rabbitmq/bin/rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 \
    || die "RabbitMQ did not finish booting"
  log "RabbitMQ ready"
}

rmq_stop() {
  rmq_env
  if pid_alive "$RMQ_PID"; then
    local pid; pid=$(cat "$RMQ_PID")
    log "stopping RabbitMQ (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$RMQ_PID"
  # epmd outlives the node; it refuses to stop while other Erlang nodes are registered with it.
  epmd -kill >/dev/null 2>&1 || true
}

status() {
  if pid_alive "$MYSQL_PID"; then echo "mariadb: running (pid $(cat "$MYSQL_PID"), port $MYSQL_PORT)"; else echo "mariadb: stopped"; fi
  if pid_alive "$RMQ_PID"; then echo "rabbitmq: running (pid $(cat "$RMQ_PID"), port $AMQP_PORT)"; else echo "rabbitmq: stopped"; fi
}

case "${1:-}" in
  install) install ;;
  start) mysql_start; rmq_start ;;
  stop) rmq_stop; mysql_stop ;;
  restart-rabbitmq) rmq_stop; rmq_start ;;
  start-mysql) mysql_start ;;
  stop-mysql) mysql_stop ;;
  start-rabbitmq) rmq_start ;;
  stop-rabbitmq) rmq_stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|restart-rabbitmq|status" >&2; exit 2 ;;
esac
