# Sourced by the scripts: make .venv (Python 3.11+) with the project's dev extras.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$STAMP" ]; then
    echo "Installing into .venv (log: .venv/install.log)..."
    if ! { .venv/bin/python -m pip install --upgrade pip \
           && .venv/bin/python -m pip install -e ".[dev]"; } >.venv/install.log 2>&1; then
        grep -v "is ignored" .venv/install.log | tail -30
        exit 1
    fi
    rm -f .venv/.installed-*
    touch "$STAMP"
fi
