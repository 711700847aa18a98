#!/usr/bin/env bash
# bench_floor on the lent GPU machine (issue 15), in two halves:
#
#   here (once, in the repository root):  bash benchmarks/bench_floor_device.sh prepare
#       -> .device/floor/ (ignored): the diffusers wheel the device image lacks (pure Python, no deps
#          missing there) and the hub config files of ../shared/spec/mvdream_configs (../shared does
#          not travel). About 8 MB.
#   device run (carry [".device/floor"], timeout_s 300; about 4.5 min wall in all):
#       bash benchmarks/bench_floor_device.sh run
#
# The run installs the wheel into /tmp/site, then runs bench_floor.py with its default budget (255 s for
# the whole benchmark, rows that no longer fit are skipped with a note) and writes bench_floor.{md,json,log}
# under $OUT.
set -euo pipefail
DIR=.device/floor
case "${1:-}" in
  prepare)
    mkdir -p "$DIR"
    rm -f "$DIR"/*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$DIR" diffusers==0.42.1
    rm -rf "$DIR/mvdream_configs"
    cp -r "${LGM_SHARED_DIR:-../shared}/spec/mvdream_configs/imagedream-ipmv-diffusers" "$DIR/mvdream_configs"
    chmod -R u+w "$DIR/mvdream_configs"
    du -sh "$DIR"
    ;;
  run)
    T0=$SECONDS
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$DIR"/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
    python3 benchmarks/bench_floor.py --configs "$DIR/mvdream_configs" --out "${OUT:-.}" ${BENCH_FLOOR_ARGS:-} \
      2>&1 | tee "${OUT:-.}/bench_floor.log"
    echo "device command total $((SECONDS - T0)) s"
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
