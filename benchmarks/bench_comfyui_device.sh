#!/usr/bin/env bash
# bench_comfyui on the lent GPU machine (issue 17.6): the pack's image -> Gaussians and text -> 3D graphs
# executed in-process by ComfyUI 0.33.0's own PromptExecutor, in two halves:
#
#   here (once, in the repository root):  bash benchmarks/bench_comfyui_device.sh prepare
#       -> .device/comfyui/ (ignored, ~6 MB):
#          comfyui-0.33.0-slim.tar.gz  ComfyUI 0.33.0 from ../shared/comfyui/ without its tests, blueprints,
#                                      tokenizer vocabularies and API-spec file (none is read on these graphs)
#          mvdream_configs/            the hub config files of ../shared/spec/mvdream_configs (../shared
#                                      does not travel)
#          wheels/                     what ComfyUI 0.33's executor imports and the device image lacks
#                                      (found by running it with the image's package list): comfy-aimdo,
#                                      comfy-kitchen (without its compiled CUDA/ROCm extensions, ~190 MB: ComfyUI then uses
#                                      kitchen's eager backend; the pack's models never go through
#                                      comfy.ops/kitchen), torchsde, trampoline. PyAV (video I/O, nothing
#                                      on these graphs) is replaced by an inert stand-in at run time, as in
#                                      the H100 run.
#   device run (carry [".device/comfyui", ".device/floor", ".device/render"], timeout_s 600; about 5-6 min):
#       bash benchmarks/bench_comfyui_device.sh run
#       .device/floor holds the diffusers wheel (benchmarks/bench_floor_device.sh prepare), .device/render
#       the prebuilt gsplat_cuda.so (optional: without it the pack's torch renderer runs).
#
# The run installs the wheels the machine lacks into /tmp/site (never over a package the image has),
# unpacks ComfyUI into /tmp/comfyui, runs bench_comfyui.py and writes bench_comfyui.{json,log} under $OUT.
# PY (default python3) and BENCH_COMFYUI_ARGS (e.g. --tiny) let the run half be smoke-tested on a CPU
# machine inside a ComfyUI venv.
set -euo pipefail
DIR=.device/comfyui
SHARED="${LGM_SHARED_DIR:-../shared}"
CORE=0.33.0
WHEELS=(comfy-aimdo==0.4.13 comfy-kitchen==0.2.31 torchsde==0.2.6 trampoline==0.1.2)  # 0.33.0's own pins
case "${1:-}" in
  prepare)
    rm -rf "$DIR" && mkdir -p "$DIR/wheels"
    # the tree, slimmed
    tmp="$(mktemp -d)"
    tar -xzf "$SHARED/comfyui/comfyui-$CORE.tar.gz" -C "$tmp"
    root="$tmp/ComfyUI-$CORE"
    rm -rf "$root/tests" "$root/tests-unit" "$root/blueprints" "$root/openapi.yaml"
    find "$root/comfy" -type d -name '*_tokenizer*' -print0 \
      | xargs -0 -I{} find {} -type f ! -name '*.py' -delete
    tar -czf "$DIR/comfyui-$CORE-slim.tar.gz" -C "$tmp" "ComfyUI-$CORE"
    rm -rf "$tmp"
    # hub configs
    cp -r "$SHARED/spec/mvdream_configs" "$DIR/mvdream_configs"
    chmod -R u+w "$DIR/mvdream_configs"
    # wheels for the device's Python 3.12 (pure Python or abi3 / cp312 manylinux builds)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$DIR/wheels" "${WHEELS[@]}"
    # comfy-kitchen without its compiled CUDA/ROCm backends (backends/{cuda,hip}/_C*.so) and their RECORD lines
    python3 - "$DIR"/wheels/comfy_kitchen-*.whl <<'PYEOF'
import os, re, sys, zipfile
src = sys.argv[1]
dst = src + ".slim"
drop = re.compile(r"^comfy_kitchen/backends/(cuda|hip)/_C\.[^/]*\.so$")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if drop.match(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not drop.match(line.split(b",")[0].decode()))
        zout.writestr(item, data)
os.replace(dst, src)
PYEOF
    for f in "$DIR" "$DIR"/* "$DIR"/wheels/*; do du -sh "$f"; done
    ls .device/floor/diffusers-*.whl > /dev/null 2>&1 \
      || echo "note: the run also needs the diffusers wheel of bash benchmarks/bench_floor_device.sh prepare"
    ;;
  run)
    T0=$SECONDS
    PY="${PY:-python3}"
    OUTDIR="${OUT:-.}"
    SITE=/tmp/site
    mkdir -p "$SITE" /tmp/comfyui
    # install only what this Python lacks (the image's own packages stay in charge)
    diffusers="$(ls "$DIR"/wheels/diffusers-*.whl .device/floor/diffusers-*.whl 2> /dev/null | head -1 || true)"
    [[ -n "$diffusers" ]] || { echo "no diffusers wheel: run bash benchmarks/bench_floor_device.sh prepare" >&2; exit 2; }
    for whl in "$DIR"/wheels/*.whl "$diffusers"; do
      dist="$(basename "$whl" | cut -d- -f1)"
      if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2> /dev/null; then
        echo "have $dist $("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")"
      else
        echo "installing $(basename "$whl")"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$whl"
      fi
    done
    tar -xzf "$DIR/comfyui-$CORE-slim.tar.gz" -C /tmp/comfyui
    export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
      HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
    GSPLAT=.device/render/gsplat_cuda.so
    "$PY" benchmarks/bench_comfyui.py --comfyui "/tmp/comfyui/ComfyUI-$CORE" --configs "$DIR/mvdream_configs" \
      --gsplat-so "$GSPLAT" --json "$OUTDIR/bench_comfyui.json" ${BENCH_COMFYUI_ARGS:-} \
      2>&1 | tee "$OUTDIR/bench_comfyui.log"
    echo "device command total $((SECONDS - T0)) s"
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
