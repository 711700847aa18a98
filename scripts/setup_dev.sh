#!/usr/bin/env bash
# Install what lgm_core and its tests need into the current Python, from package registries only.
#
# torch is pinned to 2.13.0 here because on the development/CI machines that resolves to a local CPU
# wheel; an unpinned torch would pull several GB of CUDA wheels. (A ComfyUI user installs
# requirements.txt instead, which never touches torch.) Then the package itself, editable, with its
# test and train extras, torch held by a constraint.
#
# Fast and quiet: when every requirement is already satisfied and the package is installed from this
# checkout, it does nothing (no pip call). pip's output goes to .logs/ and is shown only on failure.
# If the package is installed (editable) from ANOTHER checkout, that install is left alone and only
# missing requirements are added: tests and `python -m lgm_core` import this checkout's code anyway
# (run from its root), and a shared interpreter keeps its `lgm` entry point.
#
# Usage: bash scripts/setup_dev.sh        env: PYTHON (default python3), TORCH_SPEC (default torch==2.13.0)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LGM_SCRIPT=setup_dev
# shellcheck source=scripts/_lib.sh
source "$REPO/scripts/_lib.sh"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
LOGS="$REPO/.logs"
command -v "$PY" > /dev/null || die "no Python interpreter '$PY' (set PYTHON=...)"

# state: "ok" (nothing to do), "deps" (requirements missing; the package is installed from elsewhere),
# "install" (install the package from this checkout)
# (-I: run isolated, or the checkout's own *.egg-info in the current folder would shadow the install)
state="$("$PY" -I - "$REPO" <<'PYEOF'
import importlib.metadata as md, importlib.util, json, os, sys
repo = os.path.realpath(sys.argv[1])
try:
    import tomllib
except ImportError:  # Python 3.10: no quick check, let pip decide
    print("install"); raise SystemExit
spec = importlib.util.spec_from_file_location("lgm_setup_deps", os.path.join(repo, "nodes", "dependencies.py"))
deps = importlib.util.module_from_spec(spec); sys.modules[spec.name] = deps; spec.loader.exec_module(deps)
with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
lines = project["dependencies"] + extras["test"] + extras.get("train", [])
reqs = [deps.Requirement(m.group(1), m.group(2)) for m in map(deps._REQ_LINE.match, lines) if m]
satisfied = deps.check(reqs).ok
try:
    info = json.loads(md.distribution("comfyui-lgm").read_text("direct_url.json") or "{}")
    where = os.path.realpath(info.get("url", "").removeprefix("file://")) if info.get("dir_info", {}).get("editable") else None
except md.PackageNotFoundError:
    where = None
if where == repo:
    print("ok" if satisfied else "install")
elif where and os.path.isdir(where):
    # the requirements to add (test/train extras as written in pyproject), then the other checkout
    print("ok-elsewhere " + where if satisfied else "deps " + where + "|" + " ".join(extras["test"] + extras.get("train", [])))
else:
    print("install")
PYEOF
)"
case "$state" in
    ok) exit 0 ;;
    ok-elsewhere*)
        log "requirements satisfied; the package stays installed from ${state#ok-elsewhere } (this checkout runs from its own folder)"
        exit 0 ;;
esac

PIP=("$PY" -m pip install --disable-pip-version-check --no-input)
if [[ -z "$(py_dist_version "$PY" torch)" ]]; then
    log "installing $TORCH_SPEC and numpy (log: $LOGS/pip-torch.log)"
    run_quiet "$LOGS/pip-torch.log" "${PIP[@]}" "$TORCH_SPEC" numpy
fi
torch_version="$(py_dist_version "$PY" torch)"
# The constraint keeps every later install from replacing the torch we have.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$torch_version" > "$constraints"
if [[ "$state" == deps* ]]; then
    where="${state#deps }"
    read -r -a extra_reqs <<< "${where#*|}"
    log "installing the missing requirements (the package stays installed from ${where%%|*}; log: $LOGS/pip-dev.log)"
    run_quiet "$LOGS/pip-dev.log" "${PIP[@]}" -c "$constraints" -r "$REPO/requirements.txt" "${extra_reqs[@]}"
else
    log "installing the package (editable) with test and train extras, torch held at $torch_version (log: $LOGS/pip-dev.log)"
    run_quiet "$LOGS/pip-dev.log" "${PIP[@]}" -c "$constraints" -e "$REPO[test,train]"
fi
log "done"
