#!/usr/bin/env bash
# Set up everything the project and its tests need, from a fresh clone:
#  - .venv with exactly the packages in requirements-lock.txt (hash-checked, nothing resolved here),
#    then alae-ray itself (editable, no dependencies of its own: they all come from the lock);
#  - Debian's headless Chromium for the browser test (Playwright's own browser download needs internet).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "install.sh: requirements-lock.txt is for Python 3.11; $PY is $("$PY" -V 2>&1)." \
       "Run with PYTHON=python3.11, or install the package's ranges into your own environment (docs/install.md)" >&2
  exit 1
fi
"$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-lock.txt
# setuptools comes from the lock too (--no-build-isolation), so even the build is reproducible.
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
.venv/bin/python -m pip check
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "install.sh: chromium is missing and cannot be installed without root; the browser test needs it" >&2
    exit 1
  fi
fi
echo "alae-ray installed: .venv/bin/alae-ray --help"
