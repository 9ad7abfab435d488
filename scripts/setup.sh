#!/usr/bin/env bash
# Create .venv (once) and install the lab into it; fast when nothing changed.
#   bash scripts/setup.sh [--test]      # --test also installs the test tools and the browser for UI tests
# torch: an existing torch in the base Python (say a CUDA build) is kept by giving the venv the system packages;
# otherwise torch==2.13.0 (CPU build) is installed first, on its own, before anything can pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=${1:-}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] using the torch already installed in $PY"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${pip[@]}" "torch==2.13.0"
fi
stamp=.venv/.lab-installed$want_test
hash=$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]; then
  if [ "$want_test" = "--test" ]; then "${pip[@]}" -e ".[test]"; else "${pip[@]}" -e .; fi
  echo "$hash" > "$stamp"
fi
if [ "$want_test" = "--test" ] && [ -f scripts/setup_browser.sh ]; then
  bash scripts/setup_browser.sh
fi
