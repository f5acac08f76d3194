#!/usr/bin/env bash
# Refresh requirements-lock.txt from pyproject.toml (docs/install.md, "Refreshing the lock").
# Runs pip-compile from a pinned pip-tools in a venv of its own (.venv-lock), for the Python that
# runs this script (the lock is for CPython 3.11 on Linux x86_64), with torch and torchvision held to
# the pair in scripts/torch-pair.txt. Existing pins are kept unless asked otherwise; extra arguments
# go to pip-compile, e.g.
#   bash scripts/lock.sh --upgrade-package pillow   # one package to the newest its range allows
#   bash scripts/lock.sh --upgrade                  # every package
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-lock/bin/pip-compile ]; then
  python3 -m venv .venv-lock
  .venv-lock/bin/python -m pip install --quiet 'pip==26.3' 'pip-tools==7.7.0'
fi
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv-lock/bin/pip-compile \
  --quiet --extra test --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links \
  --constraint scripts/torch-pair.txt \
  --output-file requirements-lock.txt "$@" pyproject.toml
