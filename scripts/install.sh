#!/usr/bin/env bash
# Idempotent set-up: Python packages (CPU Paddle unless a Paddle is already
# importable, e.g. paddlepaddle-gpu); with --demo the Debian Fashion-MNIST files
# and a CJK font; with --browser Chromium and chromedriver (for the search-page test).
# Under an externally managed Python (PEP 668: Debian's /usr/bin/python3 refuses
# pip installs) the packages go into a project virtual environment, .venv, which
# scripts/python.sh then runs. --venv-only stops after choosing the interpreter
# and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

externally_managed() {
  "$1" -c 'import os, sys, sysconfig
sys.exit(not (sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'
}

if [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
elif externally_managed "$PYTHON"; then
  echo "[install] $PYTHON is externally managed (PEP 668): packages go into .venv"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian keeps venv's pip bootstrap in a package of its own.
    rm -rf .venv
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  fi
  PYTHON=.venv/bin/python
fi
if [ "${1:-}" = "--venv-only" ]; then
  echo "$PYTHON"
  exit 0
fi
stamp=.install.stamp
want="$(cat requirements.txt requirements-dev.txt setup.py | sha1sum | cut -d' ' -f1) $($PYTHON -c 'import sys; print(sys.executable)')"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $PYTHON -c "import paddle, paddlenlp, ernievil2" 2>/dev/null; then
  echo "[install] python packages up to date"
else
  if ! $PYTHON -c "import paddle" 2>/dev/null; then
    echo "[install] paddlepaddle==3.3.1 (CPU)"
    $PYTHON -m pip install --quiet "paddlepaddle==3.3.1"
  fi
  echo "[install] requirements"
  $PYTHON -m pip install --quiet -r requirements.txt -r requirements-dev.txt
  $PYTHON -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi

for arg in "$@"; do
  case "$arg" in
    --demo)
      # The real Fashion-MNIST images, and a CJK font for the captions in the demo's picture.
      if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
         || [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then
        echo "[install] Debian packages dataset-fashion-mnist fonts-wqy-microhei"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist fonts-wqy-microhei >/dev/null
      fi
      ;;
    --browser)
      # Headless Chromium drives the search page in tests/test_service_browser.py: directly
      # (--dump-dom), and through chromedriver to type, upload and follow links.
      if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        echo "[install] Debian packages chromium chromium-driver"
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
      fi
      ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
