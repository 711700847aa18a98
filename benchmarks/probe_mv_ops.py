"""Single ops of the batch-16 MVDream UNet step, alone (issue 15, item 3): GEGLU kernels against the memory
bandwidth, SDPA backends on the joint multi-view self-attention, and q/k/v as one GEMM or three.

Shapes are those of the throughput row (16 prompts x 4 views x CFG = 128 UNet rows, latents 32x32): the
transformer levels of 320, 640 and 1280 channels at 1024, 256 and 64 tokens per view. fp16, CUDA events,
medians of ``--iters`` launches after warm-up (eager launches: the kernels' own time dominates at these
sizes).

Usage on the device (about 30 s): python benchmarks/probe_mv_ops.py
CPU smoke (tiny shapes, Triton interpreter, numbers meaningless): TRITON_INTERPRET=1 python benchmarks/probe_mv_ops.py --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_lgm import timed  # noqa: E402
from lgm_core.models import fused_norm  # noqa: E402

ROWS = 128  # UNet rows of the batch-16 step
LEVELS = ((320, 1024), (640, 256), (1280, 64))  # (channels, tokens per view)


def time_ms(fn, iters: int, device: str) -> float:
    """Median ms of ``iters`` calls after 3 warm-up calls (CUDA events; wall clock on the CPU)."""
    return timed(fn, iters, 3, device)[0]


def geglu_rows(device: str, iters: int, quick: bool):
    print("\n## GEGLU (h [tokens, 8C] -> [tokens, 4C])\n")
    print("| C | tokens | variant | ms | TB/s | max|d| vs row kernel |\n|---|---|---|---|---|---|")
    variants = [("row kernel (GEGLU_TILE=0)", 0, 4)] + [(f"tiles {t}, {w} warps", t, w)
                                                        for t in (2048, 4096, 8192) for w in (4, 8)]
    for c, tokens in LEVELS:
        n = ROWS * tokens if not quick else 16
        h = torch.randn(n, 8 * c, device=device, dtype=torch.float16)
        value, gate = h.chunk(2, dim=-1)
        out = torch.empty(n, 4 * c, device=device, dtype=torch.float16)
        gbytes = h.numel() * 2 * 1.5 / 1e9  # read h once, write half of it
        ref = None
        for name, tile, warps in variants:
            fused_norm.GEGLU_TILE, fused_norm.GEGLU_WARPS = tile, warps
            y = fused_norm.geglu(h)
            ref = y if ref is None else ref
            ms = time_ms(lambda: fused_norm.geglu(h), iters, device)
            print(f"| {c} | {n} | {name} | {ms:.3f} | {gbytes / ms:.2f} | {float((y - ref).abs().max()):.1e} |",
                  flush=True)
        fused_norm.GEGLU_TILE, fused_norm.GEGLU_WARPS = 0, 4
        ms = time_ms(lambda: value * F.gelu(gate), iters, device)
        print(f"| {c} | {n} | torch (gelu, mul) | {ms:.3f} | {gbytes / ms:.2f} | |", flush=True)
        ms = time_ms(lambda: torch.add(value, gate, out=out), iters, device)
        print(f"| {c} | {n} | bandwidth baseline: torch.add(value, gate) | {ms:.3f} | {gbytes / ms:.2f} | |",
              flush=True)


def attention_rows(device: str, iters: int, quick: bool):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("\n## joint multi-view self-attention (SDPA, head dim 64)\n")
    print("| C | queries per object | inputs | backend | ms |\n|---|---|---|---|---|")
    for c, tokens in LEVELS:
        groups, seq, heads = ROWS // 4, 4 * tokens, c // 64
        if quick:
            groups, seq = 2, 16
        qkv = torch.randn(groups, seq, 3 * c, device=device, dtype=torch.float16)
        strided = [t.view(groups, seq, heads, 64).transpose(1, 2) for t in qkv.chunk(3, dim=-1)]
        dense = [t.contiguous() for t in strided]
        for inputs, tensors in (("separate (3 GEMMs)", dense), ("slices of one qkv GEMM", strided)):
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                try:
                    with sdpa_kernel([backend]):
                        ms = time_ms(lambda: F.scaled_dot_product_attention(*tensors), iters, device)
                    cell = f"{ms:.3f}"
                except RuntimeError as exc:
                    cell = f"unavailable ({str(exc).splitlines()[0][:60]})"
                print(f"| {c} | {seq} | {inputs} | {backend.name} | {cell} |", flush=True)
            ms = time_ms(lambda: F.scaled_dot_product_attention(*tensors), iters, device)
            print(f"| {c} | {seq} | {inputs} | default choice | {ms:.3f} |", flush=True)


def qkv_rows(device: str, iters: int, quick: bool):
    print("\n## self-attention projections: q, k, v as three GEMMs or one\n")
    print("| C | tokens | three GEMMs ms | one GEMM ms |\n|---|---|---|---|")
    for c, tokens in LEVELS:
        n = ROWS * tokens if not quick else 16
        x = torch.randn(n, c, device=device, dtype=torch.float16)
        ws = [torch.randn(c, c, device=device, dtype=torch.float16) / c ** 0.5 for _ in range(3)]
        w = torch.cat(ws)
        three = time_ms(lambda: [F.linear(x, wi) for wi in ws], iters, device)
        one = time_ms(lambda: F.linear(x, w), iters, device)
        print(f"| {c} | {n} | {three:.3f} | {one:.3f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run)"
    print(f"# Batch-16 MVDream step ops alone\n\n- {name}, torch {torch.__version__}, fp16")
    with torch.inference_mode():
        geglu_rows(device, a.iters, a.quick)
        qkv_rows(device, a.iters, a.quick)
        if device == "cuda":
            attention_rows(device, a.iters, a.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
