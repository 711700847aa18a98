#!/usr/bin/env bash
# The project's test command: set up everything on a fresh machine, then run the whole pytest suite.
#   bash scripts/test.sh [pytest args...]
# Steps (each quiet, and a no-op when already done, so a second run starts testing at once):
#   1. scripts/setup_dev.sh          the package's and the tests' Python dependencies (torch==2.13.0 if none)
#   2. scripts/setup_system_deps.sh  chromium + fonts for the browser test (stops with what to do if impossible)
#   3. scripts/setup_comfyui.sh      the ComfyUI test environments, one per core (0.3.75 and 0.33.0), in .comfyui/
#   4. pytest; the ComfyUI tests run once per core, inside that core's environment (tests/comfy_cores.py)
# Explicit skips (the test summary lists what was skipped and why):
#   LGM_SKIP_BROWSER_TESTS=1   no chromium/playwright; the browser test is reported as skipped
#   LGM_SKIP_COMFYUI_SETUP=1   no ComfyUI environments; every ComfyUI test is reported as skipped
#   LGM_COMFY_CORES=0.33.0     test one core only
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
t0=$SECONDS
bash scripts/setup_dev.sh
if [[ "${LGM_SKIP_COMFYUI_SETUP:-0}" != "1" ]]; then
    bash scripts/setup_system_deps.sh
    bash scripts/setup_comfyui.sh
fi
echo "[test] set-up done in $((SECONDS - t0)) s; running pytest" >&2
exec "$PY" -m pytest -q -ra "$@"
