#!/usr/bin/env bash
# Install everything lgm_core and its tests need into the current Python, from package registries only.
# torch is pinned to 2.13.0 here because on the development/CI machines that resolves to a local CPU wheel;
# an unpinned torch would pull several GB of CUDA wheels. (A ComfyUI user installs requirements.txt instead,
# which never touches torch.) Idempotent: a second run installs nothing new.
#
# Usage: bash scripts/setup_dev.sh        env: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
log() { echo "[setup_dev] $*" >&2; }

if ! "$PY" -c "import torch" 2>/dev/null; then
    log "installing $TORCH_SPEC"
    "$PY" -m pip install -q "$TORCH_SPEC"
fi
torch_version="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
# The constraint keeps every later install from replacing the torch we have.
constraints="$(mktemp)"
echo "torch==$torch_version" > "$constraints"
log "installing the package (editable) with test and train extras, torch held at $torch_version"
"$PY" -m pip install -q -c "$constraints" -e "$REPO[test,train]"
rm -f "$constraints"
log "done"
