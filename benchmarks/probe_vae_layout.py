"""VAE decoding of the multi-view pipeline: contiguous (NCHW) vs channels-last weights, diffusers' own
ResnetBlock2D vs the fused kernels (``lgm_core.mvdiffusion.fused_vae``), under the pipeline's CUDA-graph
runner (issue 15, item 3: the batch-16 throughput's decode share).

Random-weight MVDream pipeline from the hub configs (bench_mvdiffusion's ``random_pipeline``), fp16;
``decode_latents`` of [N, 4, 32, 32] latents for N = 4 (one object) and 64 (16 objects): median ms
(CUDA events), and max |difference| of the images against contiguous + diffusers' blocks.

Usage on the device (about 30 s): python benchmarks/probe_vae_layout.py --configs DIR
CPU smoke (tiny pipeline): python benchmarks/probe_vae_layout.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_floor import build_pipeline  # noqa: E402
from bench_lgm import timed  # noqa: E402
from lgm_core.mvdiffusion import fused_vae  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(REPO.parent / "shared" / "spec" / "mvdream_configs" /
                                             "imagedream-ipmv-diffusers"))
    ap.add_argument("--sizes", default="4,64")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    pipe = build_pipeline("mvdream", a, device)
    pipe.use_cuda_graphs = True
    sizes = [int(n) for n in a.sizes.split(",")] if not a.quick else [4]
    print("| latents | layout | VAE blocks | decode ms | max|d| vs contiguous + diffusers |\n|---|---|---|---|---|")
    for n in sizes:
        z = torch.randn(n, 4, 32, 32, device=device, generator=torch.Generator(device).manual_seed(n))
        ref = None
        for layout in (torch.contiguous_format, torch.channels_last):
            for fused in (False, True):
                pipe.vae.to(memory_format=layout)
                (fused_vae.install if fused else fused_vae.uninstall)(pipe.vae)
                pipe.release_cuda_graphs()
                with torch.inference_mode():
                    ms, _, out = timed(lambda: pipe.decode_latents(z), a.iters if device == "cuda" else 1, 2, device)
                out = out.float().cpu()
                err = 0.0 if ref is None else float((out - ref).abs().max())
                ref = out if ref is None else ref
                name = "channels-last" if layout == torch.channels_last else "contiguous"
                blocks = "fused kernels" if fused else "diffusers"
                print(f"| {n} | {name} | {blocks} | {ms:.2f} | {err:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
