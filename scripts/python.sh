#!/usr/bin/env bash
# The project's interpreter: the .venv that scripts/install.sh makes under an externally
# managed Python (PEP 668, e.g. Debian's /usr/bin/python3), else $PYTHON (python3).
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -x "$root/.venv/bin/python" ]; then
  exec "$root/.venv/bin/python" "$@"
fi
exec "${PYTHON:-python3}" "$@"
