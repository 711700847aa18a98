#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the lgm_core command line.
#   bash scripts/run.sh text-to-3d "a ceramic owl" -o out/          (text -> 4 views -> Gaussians -> ply/grid/turntable)
#   bash scripts/run.sh image-to-3d photo.png -o out/
#   bash scripts/run.sh reconstruct v0.png v1.png v2.png v3.png -o object.ply
# Models are fetched from the Hugging Face hub on first use (ashawkey/LGM, ashawkey/mvdream-sd2.1-diffusers,
# ashawkey/imagedream-ipmv-diffusers) unless --weights/--mv-model point at local copies.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
bash "$REPO/scripts/setup_dev.sh"
cd "$REPO"
exec "$PY" -m lgm_core "$@"
