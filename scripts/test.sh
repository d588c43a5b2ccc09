#!/usr/bin/env bash
# Run the whole test suite on this machine: installs MariaDB/RabbitMQ (Debian packages, as root) and the
# Python requirements if missing, starts the servers on loopback under var/, and runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=env.sh
source "$ROOT/scripts/env.sh"

bash "$ROOT/scripts/servers.sh" install
ensure_python
bash "$ROOT/scripts/servers.sh" start
cd "$ROOT"
"$PY" -m ruff check htmengine tests benchmarks
exec "$PY" -m pytest -ra "$@"
