#!/usr/bin/env bash
# Run the hooks tests against the OLDEST supported diffusers (the main .venv covers the newest).
#
#   bash .ci/hooks-versions.sh            # creates .venv-oldest once (about a minute), then ~30 s per run
#
# 0.35.2 is the oldest diffusers whose pipelines import under transformers 5.x (0.30 .. 0.35.1 fail on
# `from transformers.utils import FLAX_WEIGHTS_NAME`). Override with DIFFUSERS_OLDEST=... TRANSFORMERS=...
set -euo pipefail
cd "$(dirname "$0")/.."

DIFFUSERS_OLDEST="${DIFFUSERS_OLDEST:-0.35.2}"
TRANSFORMERS="${TRANSFORMERS:-5.24.0}"
TORCH="${TORCH:-2.13.0}"
VENV=.venv-oldest
PY="$VENV/bin/python"

have() { "$PY" -m pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
if ! have torch "$TORCH+cpu" && ! have torch "$TORCH"; then
  # torch alone first: it resolves to the CPU build configured for this machine, not a multi-GB CUDA one
  "$PY" -m pip install -q "torch==$TORCH"
fi
# The project's runtime dependencies (importing lab imports lab.world: scipy, pillow, ...), with diffusers and
# transformers pinned and the notebook front-end left out.
DEPS=$(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
skip = {"torch", "diffusers", "transformers", "jupyterlab", "ipywidgets", "ipympl"}
print(" ".join(d for d in deps if re.split(r"[<>=!~ \[;]", d)[0].lower() not in skip))
PY
)
if ! have diffusers "$DIFFUSERS_OLDEST" || ! have transformers "$TRANSFORMERS" || ! "$PY" -c "import lab" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q "diffusers==$DIFFUSERS_OLDEST" "transformers==$TRANSFORMERS" $DEPS pytest
fi

"$PY" -c "import diffusers, transformers, torch; print('hooks tests on diffusers', diffusers.__version__, \
'transformers', transformers.__version__, 'torch', torch.__version__)"
"$PY" -m pytest tests/test_hooks_*.py -q -p no:cacheprovider -o addopts=""  # the project's addopts name plugins (nbval) not installed here
