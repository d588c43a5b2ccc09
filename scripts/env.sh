# Sourced by the other scripts: the Python environment htmengine runs in.
#
# Uses $HTMENGINE_PYTHON if set; otherwise a virtualenv at <repo>/.venv, created on first use from
# python3 and filled by `pip install -e ".[test]"` (re-installed when pyproject.toml or setup.py change).
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HTMENGINE_VENV:-$ROOT/.venv}

ensure_python() {
  if [ -n "${HTMENGINE_PYTHON:-}" ]; then
    PY=$HTMENGINE_PYTHON
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[env] creating virtualenv $VENV" >&2
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      [ "$(id -u)" -eq 0 ] || { echo "[env] python3 -m venv failed; install python3-venv" >&2; exit 1; }
      rm -rf "$VENV"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    fi
  fi
  PY=$VENV/bin/python
  local stamp=$VENV/.htmengine-installed
  local want
  want=$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" | sha1sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[env] installing requirements into $VENV" >&2
    "$PY" -m pip install -q --upgrade pip >/dev/null
    "$PY" -m pip install -q -e "$ROOT[test]"
    echo "$want" >"$stamp"
  fi
  export PATH="$(dirname "$PY"):$PATH"
}
