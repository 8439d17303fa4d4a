# Sourced by bin/tandem and bin/test: create the virtual environment and install what the
# project needs on first use, and again whenever pyproject.toml, constraints.txt or a
# package-lock.json changes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

_stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

ensure_python() {
  local want have=""
  want="$(_stamp_of "$ROOT/pyproject.toml" "$ROOT/constraints.txt")"
  [ -f "$VENV/.tandem-stamp" ] && have="$(cat "$VENV/.tandem-stamp")"
  if [ ! -x "$VENV/bin/python" ] || [ "$want" != "$have" ]; then
    local python="${PYTHON:-python3}"
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), "Tandem needs Python 3.11+"'
    echo "tandem: setting up $VENV (Python packages)..." >&2
    [ -x "$VENV/bin/python" ] || "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
    "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[dev]" >&2
    echo "$want" > "$VENV/.tandem-stamp"
  fi
}

ensure_node() {
  local dir="$ROOT/tests/js" want have=""
  command -v npm >/dev/null || { echo "tandem: Node 20+ with npm is needed for the tests" >&2; exit 1; }
  want="$(_stamp_of "$dir/package-lock.json")"
  [ -f "$dir/node_modules/.tandem-stamp" ] && have="$(cat "$dir/node_modules/.tandem-stamp")"
  if [ "$want" != "$have" ]; then
    echo "tandem: installing npm packages in tests/js..." >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" > "$dir/node_modules/.tandem-stamp"
  fi
}
