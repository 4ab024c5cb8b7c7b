# Sourced by the scripts in this folder: create .venv with Python >= 3.11 and
# install Salus into it with the pinned versions of requirements/constraints.txt.
# Usage: ensure_venv [extras]
ensure_venv() {
  local extras="${1:-}"
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local python="${PYTHON:-}"
  if [ -z "$python" ]; then
    for candidate in python3.11 python3.12 python3.13 python3; do
      if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
    done
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Salus needs Python 3.11 or newer (found: $("$python" --version 2>&1))" >&2
    exit 1
  fi
  if [ ! -x "$root/.venv/bin/python" ]; then
    echo "Creating virtual environment in .venv" >&2
    "$python" -m venv "$root/.venv"
  fi
  local stamp="$root/.venv/.salus-installed${extras:+-$extras}"
  if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
      || [ "$root/requirements/constraints.txt" -nt "$stamp" ]; then
    echo "Installing Salus${extras:+ [$extras]} with pinned dependencies" >&2
    "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip>=24"
    "$root/.venv/bin/python" -m pip install -q --disable-pip-version-check \
      -c "$root/requirements/constraints.txt" -e "$root${extras:+[$extras]}"
    touch "$stamp"
  fi
}
