"""LGM ``big`` fp16 through the library's default fast path (``load``-style model +
``optimize_for_inference()``, what the CLI and the nodes call), batch 1 and 4, CUDA events, medians;
also with the fused GroupNorm switched off, and the error against the fp32 model.

Usage (GPU): python benchmarks/bench_lgm_default_path.py
"""
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from bench_lgm import build, timed  # noqa: E402
from lgm_core.models import unet  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
print(torch.cuda.get_device_name() if dev == "cuda" else "cpu", torch.__version__,
      "allocator", torch.cuda.get_allocator_backend() if dev == "cuda" else "-")
ref_model = build("big", dev, torch.float32)
print("| fused GroupNorm | batch | median ms | peak GB | channels-last | max|d| vs fp32 |")
print("|---|---|---|---|---|---|")
for fused in (True, False):
    unet.FUSED_GROUPNORM = fused
    model = build("big", dev, torch.float16).optimize_for_inference()
    for b in (1, 4):
        x = torch.randn(b, 4, 9, 256, 256, device=dev, generator=torch.Generator(dev).manual_seed(b))
        with torch.no_grad():
            ref = ref_model.forward_gaussians(x)
            ms, peak, out = timed(lambda: model.forward_gaussians(x), 50, 10, dev)
        print(f"| {fused} | {b} | {ms:.2f} | {peak:.3f} | {model._channels_last} | {float((out - ref).abs().max()):.3g} |")
    del model
