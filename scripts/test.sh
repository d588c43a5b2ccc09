#!/usr/bin/env bash
# Run the whole test suite on this machine: installs MariaDB/RabbitMQ (Debian packages, as root) and the
# Python requirements if missing, starts the servers on loopback under var/, and runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"

bash "$ROOT/scripts/servers.sh" install
# The dashboard's browser tests drive Debian's chromium (Playwright never downloads a browser).
if ! command -v chromium >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "[test] installing chromium needs root (apt-get)" >&2; exit 1; }
  echo "[test] installing chromium from Debian packages" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
ensure_python
bash "$ROOT/scripts/servers.sh" start
cd "$ROOT"
"$PY" -m ruff check htmengine tests benchmarks
exec "$PY" -m pytest -ra "$@"
