#!/usr/bin/env bash
# Set up everything the project and its tests need, from a fresh clone:
#  - .venv with alae-ray (editable) and its test tools;
#  - Debian's headless Chromium for the browser test (Playwright's own browser download needs internet).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -e '.[test]'
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
