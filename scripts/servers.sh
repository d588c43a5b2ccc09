#!/usr/bin/env bash
# Install, start and stop the local MariaDB and RabbitMQ servers htmengine needs.
#
#   scripts/servers.sh install          apt-get install mariadb-server rabbitmq-server (if missing; root)
#   scripts/servers.sh start            initialise data under var/ (first time) and start both on 127.0.0.1
#   scripts/servers.sh stop             stop both
#   scripts/servers.sh restart-rabbitmq stop and start RabbitMQ only (tests use it)
#   scripts/servers.sh status           say what runs
#   scripts/servers.sh rabbitmqctl ARGS rabbitmqctl against this node (as the user it runs as)
#   scripts/servers.sh secret SECTION KEY   print one value of the local secrets file
#
# Servers run as plain background processes (no systemd), data and logs under $HTMENGINE_VAR
# (default: <repo>/var). Ports: $HTMENGINE_MYSQL_PORT (3306), $HTMENGINE_AMQP_PORT (5672).
#
# Local security (every start checks and repairs it, so an install made by an older version of this
# script is migrated in place):
# - Run as root, the servers run as the system user $HTMENGINE_SERVICE_USER (default htmengine,
#   created here); otherwise as the calling user. Their data directories belong to that user (0700).
# - The services log in as the dedicated MariaDB user `htmengine` (rights on databases htmengine*
#   only) and the RabbitMQ user `htmengine` (vhost `htmengine` only), with generated passwords kept in
#   $VAR/secrets/local.cnf (directory 0700, file 0600; a MySQL option file that htmengine/config.py
#   reads and `mariadb --defaults-extra-file=` accepts). MariaDB root gets a generated password,
#   kept in $VAR/secrets/admin.cnf for this script only; RabbitMQ's guest user is deleted.
# - mariadbd runs with secure_file_priv on an empty directory and without LOCAL INFILE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=${HTMENGINE_VAR:-$ROOT/var}
MYSQL_PORT=${HTMENGINE_MYSQL_PORT:-3306}
AMQP_PORT=${HTMENGINE_AMQP_PORT:-5672}
# One Erlang node name per AMQP port, so a second node can run beside the default one (both register
# with the one epmd on 4369). The default port keeps the historic name (its data dir is named by it).
if [ "$AMQP_PORT" = 5672 ]; then DEFAULT_NODENAME=rabbit@localhost; else DEFAULT_NODENAME=rabbit$AMQP_PORT@localhost; fi
RMQ_NODENAME=${HTMENGINE_RABBITMQ_NODENAME:-$DEFAULT_NODENAME}

SECRETS_DIR=$VAR/secrets
SECRETS=$SECRETS_DIR/local.cnf
ADMIN_SECRETS=$SECRETS_DIR/admin.cnf
APP_USER=htmengine            # MariaDB and RabbitMQ user of the services
APP_VHOST=htmengine           # RabbitMQ vhost of the services
APP_DB_PATTERN='htmengine%'   # databases the MariaDB user may use (the app's and the tests' htmengine_t*)

if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=${HTMENGINE_SERVICE_USER:-htmengine}
else
  RUN_AS=$(id -un)
fi

log() { echo "[servers] $*" >&2; }
die() { echo "[servers] ERROR: $*" >&2; exit 1; }

# The directory the servers' data lives in: $VAR, unless running as root and the service user cannot
# reach it (a parent such as /root is not searchable); then a directory of its own under /var/lib.
server_base() {
  if [ "$(id -u)" -ne 0 ] || ! id -u "$RUN_AS" >/dev/null 2>&1 || as_server_user test -x "$VAR" 2>/dev/null; then
    echo "$VAR"
  else
    echo "/var/lib/htmengine/$(printf %s "$VAR" | sha1sum | cut -c1-12)"
  fi
}

ensure_service_user() {
  [ "$(id -u)" -eq 0 ] || return 0
  id -u "$RUN_AS" >/dev/null 2>&1 && return 0
  log "creating system user $RUN_AS"
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$RUN_AS"
}

# Run a command as the servers' user, keeping the environment (HOME, RABBITMQ_* ...).
as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --init-groups -- "$@"
  else
    "$@"
  fi
}

# The same, replacing the calling (background) subshell, so no bash lingers as the server's parent.
exec_as_server_user() {
  if [ "$(id -u)" -eq 0 ]; then
    exec setpriv --reuid="$RUN_AS" --regid="$RUN_AS" --init-groups -- "$@"
  else
    exec "$@"
  fi
}

# mkdir -p, owned by the servers' user, mode 0700.
server_dir() {
  mkdir -p "$@"
  [ "$(id -u)" -ne 0 ] || chown "$RUN_AS:" "$@"
  chmod 0700 "$@"
}

setup_paths() {
  [ -d "$VAR" ] || { mkdir -p "$VAR"; chmod 0755 "$VAR"; }
  BASE=$(server_base)
  if [ "$BASE" != "$VAR" ]; then
    mkdir -p "$BASE"; chmod 0755 /var/lib/htmengine "$BASE"
    log "$RUN_AS cannot reach $VAR: server data in $BASE (secrets stay in $SECRETS_DIR)"
  fi
  MYSQL_DIR=$BASE/mysql
  MYSQL_DATA=$MYSQL_DIR/data
  MYSQL_FILES=$MYSQL_DIR/secure-files   # secure_file_priv: empty, nothing can be read or written through SQL
  MYSQL_SOCK=$MYSQL_DIR/mysqld.sock
  MYSQL_PID=$MYSQL_DIR/mysqld.pid
  MYSQL_LOG=$MYSQL_DIR/mysqld.log
  RMQ_DIR=$BASE/rabbitmq
  RMQ_PID=$RMQ_DIR/rabbit.pid
}

# -- the secrets files ---------------------------------------------------------------------------

# The value of KEY in [SECTION] of an INI file (empty if absent).
ini_get() {
  [ -f "$1" ] || return 0
  awk -v section="[$2]" -v key="$3" '
    /^[ \t]*\[/ { current = $0; gsub(/[ \t]/, "", current); next }
    current == section {
      line = $0; sub(/^[ \t]+/, "", line)
      if (index(line, key "=") == 1 || index(line, key " =") == 1) {
        sub(/^[^=]*=[ \t]*/, "", line); sub(/[ \t]+$/, "", line); print line; exit
      }
    }' "$1"
}

gen_password() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# A secret kept in FILE, or a new one (passwords are hex: no quoting in option files, URLs or SQL).
secret_or_new() {
  local value; value=$(ini_get "$1" "$2" "$3")
  if [ -n "$value" ]; then echo "$value"; else gen_password; fi
}

# Write a file readable by its owner only, atomically.
write_private() {
  local target=$1 tmp
  tmp=$(mktemp "$target.XXXXXX")
  chmod 0600 "$tmp"
  cat >"$tmp"
  mv -f "$tmp" "$target"
}

ensure_secrets_dir() {
  mkdir -p "$SECRETS_DIR"
  chmod 0700 "$SECRETS_DIR"
}

# The services' credentials; existing passwords are kept, the ports follow this start.
write_local_secrets() {
  ensure_secrets_dir
  local db_pw rmq_pw sup_user sup_pw
  db_pw=$(secret_or_new "$SECRETS" client password)
  rmq_pw=$(secret_or_new "$SECRETS" rabbitmq password)
  sup_user=$(ini_get "$SECRETS" supervisor username); sup_user=${sup_user:-htmengine}
  sup_pw=$(secret_or_new "$SECRETS" supervisor password)
  write_private "$SECRETS" <<CNF
# Credentials of the local servers, written by scripts/servers.sh (keep this file private).
# Read by htmengine/config.py where application.conf / rabbitmq.conf leave user empty;
# [client] is also a MySQL option file: mariadb --defaults-extra-file=$SECRETS htmengine
[client]
host=127.0.0.1
port=$MYSQL_PORT
user=$APP_USER
password=$db_pw

[rabbitmq]
host=127.0.0.1
port=$AMQP_PORT
virtual_host=$APP_VHOST
user=$APP_USER
password=$rmq_pw

# supervisord's XML-RPC over HTTP (conf/supervisord.conf [inet_http_server])
[supervisor]
username=$sup_user
password=$sup_pw
CNF
}

# -- MariaDB -------------------------------------------------------------------------------------

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Whether a running mariadbd was started the old way (as root, or without secure_file_priv).
mysql_outdated() {
  local pid=$1
  [ "$(stat -c %u "/proc/$pid")" = "$(id -u "$RUN_AS")" ] || return 0
  tr '\0' '\n' <"/proc/$pid/cmdline" | grep -q '^--secure-file-priv=.' || return 0
  return 1
}

# A server of this var/ already running on another port than asked: say so rather than write the
# asked port into the secrets file.
check_port() {
  [ "$2" = "$3" ] || die "$1 of $VAR already runs on port $2, not $3 (set HTMENGINE_*_PORT to match, or stop it)"
}

mysql_start() {
  if pid_alive "$MYSQL_PID"; then
    local pid; pid=$(cat "$MYSQL_PID")
    check_port MariaDB "$(tr '\0' '\n' <"/proc/$pid/cmdline" | sed -n 's/^--port=//p')" "$MYSQL_PORT"
    if mysql_outdated "$pid"; then
      log "MariaDB (pid $pid) runs as root or without secure_file_priv: restarting it as $RUN_AS"
      mysql_stop
    else
      log "MariaDB already running (pid $pid)"
      mysql_accounts
      return
    fi
  fi
  server_dir "$MYSQL_DIR" "$MYSQL_FILES"
  if [ ! -d "$MYSQL_DATA/mysql" ]; then
    log "initialising MariaDB data in $MYSQL_DATA"
    as_server_user mariadb-install-db --user="$RUN_AS" --datadir="$MYSQL_DATA" \
      --auth-root-authentication-method=normal --skip-test-db >"$MYSQL_DIR/install.log" 2>&1 \
      || { cat "$MYSQL_DIR/install.log" >&2; die "mariadb-install-db failed"; }
  fi
  # Data made by an older version of this script belongs to root.
  [ "$(id -u)" -ne 0 ] || chown -R "$RUN_AS:" "$MYSQL_DIR"
  chmod 0700 "$MYSQL_DATA"
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT as $RUN_AS"
  exec_as_server_user nohup mariadbd --no-defaults --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCK" \
    --pid-file="$MYSQL_PID" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --skip-name-resolve=0 \
    --secure-file-priv="$MYSQL_FILES" --local-infile=0 \
    --log-error="$MYSQL_LOG" --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
    --innodb-buffer-pool-size=512M --innodb-flush-log-at-trx-commit=1 --max-connections=500 \
    >/dev/null 2>&1 9>&- &
  for _ in $(seq 1 100); do
    # ping answers "alive" (exit 0) even when the login is refused: it only tests the socket.
    if mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -uping ping >/dev/null 2>&1; then
      log "MariaDB ready"
      mysql_accounts
      return
    fi
    sleep 0.2
  done
  tail -20 "$MYSQL_LOG" >&2 || true
  die "MariaDB did not answer within 20 s (log: $MYSQL_LOG)"
}

mysql_as_admin() {
  mariadb --defaults-extra-file="$ADMIN_SECRETS" --socket="$MYSQL_SOCK" --batch --skip-column-names "$@"
}

# Log in as root with the stored password; an install made before root had one (or a fresh one) is
# given one first.
mysql_admin_login() {
  if [ -n "$(ini_get "$ADMIN_SECRETS" client password)" ] && mysql_as_admin -e "SELECT 1" >/dev/null 2>&1; then
    return
  fi
  mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot -e "SELECT 1" >/dev/null 2>&1 \
    || die "cannot log in to MariaDB as root, neither with $ADMIN_SECRETS nor without a password"
  log "giving MariaDB root a password (kept in $ADMIN_SECRETS)"
  ensure_secrets_dir
  local pw hosts host
  pw=$(secret_or_new "$ADMIN_SECRETS" client password)
  printf '# MariaDB root of the local server (scripts/servers.sh only; the services never use it)\n[client]\nuser=root\npassword=%s\n' \
    "$pw" | write_private "$ADMIN_SECRETS"
  hosts=$(mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot --batch --skip-column-names \
    -e "SELECT Host FROM mysql.user WHERE User = 'root'")
  {
    for host in $hosts; do echo "ALTER USER 'root'@'$host' IDENTIFIED BY '$pw';"; done
  } | mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot
  mysql_as_admin -e "SELECT 1" >/dev/null || die "MariaDB root login with the new password failed"
}

# The services' user with exactly the rights they and the tests need: data and schema (tables,
# indexes, create/drop of the app's and the tests' per-session databases) on htmengine* only.
# No global rights: no FILE, PROCESS, SUPER, GRANT.
mysql_accounts() {
  mysql_admin_login
  write_local_secrets
  local pw anonymous host
  pw=$(ini_get "$SECRETS" client password)
  anonymous=$(mysql_as_admin -e "SELECT Host FROM mysql.user WHERE User = ''")
  {
    for host in $anonymous; do echo "DROP USER ''@'$host';"; done
    cat <<SQL
CREATE USER IF NOT EXISTS '$APP_USER'@'localhost' IDENTIFIED BY '$pw';
ALTER USER '$APP_USER'@'localhost' IDENTIFIED BY '$pw';
GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, INDEX, REFERENCES
  ON \`$APP_DB_PATTERN\`.* TO '$APP_USER'@'localhost';
SQL
  } | mysql_as_admin
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

# -- RabbitMQ ------------------------------------------------------------------------------------

rmq_env() {
  export HOME=$RMQ_DIR/home
  export RABBITMQ_NODENAME=$RMQ_NODENAME
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

rmqctl() { as_server_user /usr/lib/rabbitmq/bin/rabbitmqctl "$@"; }

rmq_start() {
  rmq_env
  if pid_alive "$RMQ_PID"; then
    local pid; pid=$(cat "$RMQ_PID")
    check_port RabbitMQ "$(sed -n 's/^listeners.tcp.default = 127.0.0.1://p' "$RABBITMQ_CONFIG_FILE.conf")" "$AMQP_PORT"
    if [ "$(stat -c %u "/proc/$pid")" != "$(id -u "$RUN_AS")" ]; then
      log "RabbitMQ (pid $pid) runs as root: restarting it as $RUN_AS"
      rmq_stop
    else
      log "RabbitMQ already running (pid $pid)"
      rmq_accounts
      return
    fi
  fi
  server_dir "$RMQ_DIR" "$HOME" "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  [ -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ] || echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  # Loopback only; larger frame for batches. A fresh node creates guest with a throw-away password
  # (never stored); rmq_accounts deletes it once the node is up.
  write_private "$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
default_pass = $(gen_password)
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
CONF
  # Data (and the Erlang cookie in $HOME) made by an older version of this script belong to root.
  [ "$(id -u)" -ne 0 ] || chown -R "$RUN_AS:" "$RMQ_DIR"
  log "starting RabbitMQ on 127.0.0.1:$AMQP_PORT as $RUN_AS (node $RMQ_NODENAME)"
  exec_as_server_user nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$RMQ_DIR/server.out" 2>&1 9>&- &
  sleep 1
  if ! rmqctl wait --timeout 120 "$RMQ_PID" >/dev/null 2>&1; then
    tail -30 "$RMQ_DIR/server.out" >&2 || true
    die "RabbitMQ did not start (see $RMQ_DIR/server.out and $RABBITMQ_LOG_BASE)"
  fi
  rmqctl await_startup --timeout 120 >/dev/null 2>&1 || die "RabbitMQ did not finish booting"
  log "RabbitMQ ready"
  rmq_accounts
}

# The services' user and vhost (full rights there, none elsewhere); guest is deleted. Passwords go
# through stdin, never the command line. Each rabbitmqctl call costs seconds (tests restart the
# node), so a node whose database was already set up with this password is left alone: the stamp
# names the node's database directory (its inode: a new database is a new directory) and the
# password's hash.
rmq_accounts() {
  write_local_secrets
  local pw users stamp
  pw=$(ini_get "$SECRETS" rabbitmq password)
  stamp="$RMQ_NODENAME $(stat -c %i "$RABBITMQ_MNESIA_BASE/$RMQ_NODENAME") $(printf %s "$pw" | sha1sum | cut -c1-40)"
  [ "$(cat "$RMQ_DIR/accounts.ok" 2>/dev/null)" != "$stamp" ] || return 0
  rmqctl -q list_vhosts name | grep -qx "$APP_VHOST" || rmqctl -q add_vhost "$APP_VHOST" >/dev/null
  users=$(rmqctl -q list_users | awk '{print $1}')
  if grep -qx "$APP_USER" <<<"$users"; then
    # Keeps the broker in step with the secrets file (e.g. after it was deleted and regenerated).
    printf '%s\n' "$pw" | rmqctl -q authenticate_user "$APP_USER" >/dev/null 2>&1 \
      || printf '%s\n' "$pw" | rmqctl -q change_password "$APP_USER" >/dev/null
  else
    log "creating RabbitMQ user $APP_USER and vhost $APP_VHOST"
    printf '%s\n' "$pw" | rmqctl -q add_user "$APP_USER" >/dev/null
  fi
  rmqctl -q set_permissions -p "$APP_VHOST" "$APP_USER" '.*' '.*' '.*' >/dev/null
  if grep -qx guest <<<"$users"; then
    log "deleting RabbitMQ user guest"
    rmqctl -q delete_user guest >/dev/null
  fi
  echo "$stamp" >"$RMQ_DIR/accounts.ok"
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
  # epmd outlives the node; stop it only when no other node (another var/'s, on another port) uses it.
  if command -v epmd >/dev/null 2>&1 && ! epmd -names 2>/dev/null | grep -q '^name '; then
    epmd -kill >/dev/null 2>&1 || true
  fi
}

status() {
  if pid_alive "$MYSQL_PID"; then echo "mariadb: running (pid $(cat "$MYSQL_PID"), port $MYSQL_PORT)"; else echo "mariadb: stopped"; fi
  if pid_alive "$RMQ_PID"; then echo "rabbitmq: running (pid $(cat "$RMQ_PID"), port $AMQP_PORT, node $RMQ_NODENAME)"; else echo "rabbitmq: stopped"; fi
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

case "${1:-}" in
  install) install; exit ;;
  secret) [ $# -eq 3 ] || die "usage: $0 secret SECTION KEY"; ini_get "$SECRETS" "$2" "$3"; exit ;;
esac
case "${1:-}" in
  start|start-*|restart-*|stop|stop-*)
    # One at a time per var/: the test sessions of several checkouts start the shared servers at
    # once. (fd 9 is closed for the servers, which would otherwise hold the lock.)
    mkdir -p "$VAR"
    exec 9>"$VAR/.servers.lock"
    flock 9
    ensure_service_user
    ;;
esac
setup_paths
umask 077
case "${1:-}" in
  start) mysql_start; rmq_start ;;
  stop) rmq_stop; mysql_stop ;;
  restart-rabbitmq) rmq_stop; rmq_start ;;
  start-mysql) mysql_start ;;
  stop-mysql) mysql_stop ;;
  start-rabbitmq) rmq_start ;;
  stop-rabbitmq) rmq_stop ;;
  rabbitmqctl) shift; rmq_env; rmqctl "$@" ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|restart-rabbitmq|status|rabbitmqctl ARGS|secret SECTION KEY" >&2; exit 2 ;;
esac
