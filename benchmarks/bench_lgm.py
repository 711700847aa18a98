"""Benchmark LGM ``forward_gaussians`` (random weights: compute does not depend on values).

Runs every variant side by side in one process and prints a Markdown table: median ms over
``--iters`` timed runs after warm-up (CUDA events) and peak allocated memory (weights included).

    python benchmarks/bench_lgm.py                 # GPU, preset big, the full table
    python benchmarks/bench_lgm.py --quick         # CPU smoke run (tiny preset, few iterations)

Variants:
  * ``math``: explicit softmax attention with GroupNorm upcast to fp32 — what the original code
    does under fp16 autocast without xformers (its measured 22.2 ms / 2.0 GB on the H100).
  * ``sdpa``: ``scaled_dot_product_attention`` (flash / memory-efficient kernels).
  * ``+cl``: channels-last convolutions.  ``+compile``: ``torch.compile`` of the network.
The last column is the max |difference| of the Gaussians vs the fp32 math reference on the same
input (fp16/bf16 rounding noise expected; positions/colours are in [-1, 1] / [0, 1]).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lgm_core.models.lgm import LGM  # noqa: E402
from lgm_core.models import unet as unet_module  # noqa: E402
from lgm_core.models.unet import GroupNorm32  # noqa: E402


def build(preset, device: str, dtype: torch.dtype) -> LGM:
    """Random-weight LGM of a preset name or an ``LGMConfig`` (the same weights in every process)."""
    with torch.device("meta"):
        model = LGM(preset)
    model = model.to(dtype=torch.float32).to_empty(device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)
    return model.to(dtype).eval().requires_grad_(False)


def timed(fn, iters: int, warmup: int, device: str, base_bytes: int = 0):
    """(median ms, peak GB allocated above ``base_bytes`` during the timed calls (NaN on CPU), last output)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        peak = (torch.cuda.max_memory_allocated() - base_bytes) / 2**30
    else:
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t) * 1000)
        peak = float("nan")
    return statistics.median(times), peak, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="big")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny preset, 2 iterations")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    if args.quick:
        args.preset, args.iters, args.warmup, args.no_compile = "tiny", 2, 1, True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    F16, BF16 = torch.float16, torch.bfloat16
    variants = [  # (name, dtype, batch, attention, channels_last, compile, native GN, cuda graphs)
        ("math (original-like)", F16, 1, "math", False, False, False, False),
        ("sdpa", F16, 1, "sdpa", False, False, True, False),
        ("sdpa+cl", F16, 1, "sdpa", True, False, True, False),
        ("sdpa+graph", F16, 1, "sdpa", False, False, True, True),
        ("sdpa+cl+graph", F16, 1, "sdpa", True, False, True, True),
        ("sdpa+cl+compile+graph = optimize_for_inference(compile=True)", F16, 1, "sdpa", True, True, True, True),
        ("math (original-like)", BF16, 1, "math", False, False, False, False),
        ("sdpa+cl+graph", BF16, 1, "sdpa", True, False, True, True),
        ("math (original-like)", F16, 4, "math", False, False, False, False),
        ("sdpa+cl", F16, 4, "sdpa", True, False, True, False),
        ("sdpa+cl+graph", F16, 4, "sdpa", True, False, True, True),
        ("sdpa+cl+compile+graph = optimize_for_inference(compile=True)", F16, 4, "sdpa", True, True, True, True),
        ("math (original-like)", BF16, 4, "math", False, False, False, False),
        ("sdpa+cl+graph", BF16, 4, "sdpa", True, False, True, True),
    ]
    if device == "cpu":
        variants = [(n, torch.float32, b, a, cl, False, g, False) for n, _, b, a, cl, c, g, _ in variants
                    if b == 1 and not c][:2]

    gen = torch.Generator(device="cpu").manual_seed(1)
    inputs = {b: torch.randn(b, 4, 9, 256, 256, generator=gen).to(device) for b in (1, 4)}

    # fp32 reference outputs (math attention) for the accuracy column
    ref_model = build(args.preset, device, torch.float32).set_attention("math")
    with torch.no_grad():
        refs = {b: ref_model.forward_gaussians(inputs[b]) for b in (1, 4) if b == 1 or device == "cuda"}
    state = {k: v.detach().cpu() for k, v in ref_model.state_dict().items()}  # keep GPU peak honest
    del ref_model
    if device == "cuda":
        torch.cuda.empty_cache()

    rows = []
    fused_default = unet_module.FUSED_GROUPNORM
    for name, dtype, batch, attn, cl, comp, native_gn, graphs in variants:
        GroupNorm32.native_half_on_cuda = native_gn
        unet_module.FUSED_GROUPNORM = fused_default and native_gn  # the original-like rows: torch's kernels
        with torch.device("meta"):
            model = LGM.from_preset(args.preset)
        model = model.to(dtype=dtype).to_empty(device=device)
        model.load_state_dict(state)
        model.eval().requires_grad_(False).set_attention(attn)
        if cl:
            model.use_channels_last()
        fn_model = model.forward_gaussians
        if comp:
            model.optimize_for_inference(compile=True)
        elif graphs:
            model.use_cuda_graphs()
        x = inputs[batch]
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn_model(x)  # first call (compilation for compiled variants)
            first = time.perf_counter() - t0
            ms, peak, out = timed(lambda: fn_model(x), args.iters, args.warmup, device)
        err = (out.float() - refs[batch]).abs().max().item() if batch in refs else float("nan")
        rows.append((batch, str(dtype).replace("torch.", ""), name, ms, peak, first, err))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        del model, fn_model, out
        if device == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset() if comp else None

    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\nLGM `{args.preset}` forward_gaussians, input [B,4,9,256,256], {dev_name}, torch {torch.__version__}\n")
    print("| batch | dtype | variant | median ms | peak GB | first call s | max abs err vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for b, dt, name, ms, peak, first, err in rows:
        print(f"| {b} | {dt} | {name} | {ms:.2f} | {peak:.2f} | {first:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
