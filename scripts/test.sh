#!/usr/bin/env bash
# The project's test command: set up everything on a fresh machine, then run the whole pytest suite.
#   bash scripts/test.sh [pytest args...]
# Steps: scripts/setup_dev.sh (package + test deps), scripts/setup_comfyui.sh (a real ComfyUI v0.3.75 test
# environment in .comfyui/, plus Chromium/playwright for the browser test when available), then pytest.
# Set LGM_SKIP_COMFYUI_SETUP=1 to skip the ComfyUI environment (those tests then skip with a reason).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
bash scripts/setup_dev.sh
if [[ "${LGM_SKIP_COMFYUI_SETUP:-0}" != "1" ]]; then
    if [[ -f scripts/setup_system_deps.sh ]]; then bash scripts/setup_system_deps.sh; fi
    bash scripts/setup_comfyui.sh
fi
exec "$PY" -m pytest -q -ra "$@"
