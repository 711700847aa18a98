"""LGM big's cross-view self-attention calls, timed alone per SDPA backend (issue 15, item 1).

LGM attends over the tokens of all 4 views of an object at its 32x32 (512 channels, head dim 32),
16x16 and 8x8 (1024 channels, head dim 64) levels, 16 heads, q/k/v as slices of one qkv GEMM's output
(``lgm_core.models.unet.SelfAttention``). The default path's 16 attention calls take ~0.85 ms of GPU time
at batch 1 on the H200 (benchmarks/results/probe_lgm_fusion_join_h200.md); this probe says which backend
is fastest per level (CUDA graphs of ``--reps`` calls, median of ``--iters`` replays) and how far each is
from float32 attention (q/k/v drawn with std 0.5: near-uniform softmax, outputs ~1e-2, so the error column
only shows that every backend is within an fp16 rounding or two).

    python benchmarks/probe_lgm_attention.py --out $OUT     # H200, ~20 s
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from probe_convs import graph_time  # noqa: E402

LEVELS = ((512, 32, 5), (1024, 16, 5), (1024, 8, 6))  # channels, side, calls per LGM big forward
HEADS = 16


def qkv_slices(b: int, tokens: int, c: int, device, gen):
    qkv = (torch.randn((b, tokens, 3 * c), generator=gen) * 0.5).to(device, torch.float16)
    return qkv.reshape(b, tokens, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4).unbind(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 0
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = (("default", None), ("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION))
    lines = [f"# LGM big attention calls per SDPA backend\n\n- {torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"fp16, {HEADS} heads, q/k/v slices of one qkv tensor, {a.reps} calls per CUDA graph, median of "
             f"{a.iters} replays\n",
             "| batch | level | tokens per object | head dim | calls | " + " | ".join(f"{n} µs" for n, _ in backends)
             + " | max\\|d\\| vs fp32 (" + ", ".join(n for n, _ in backends) + ") |",
             "|---|---|---|---|---|" + "---|" * (len(backends) + 1)]
    gen = torch.Generator().manual_seed(0)
    totals = {}
    for b in (int(v) for v in a.batches.split(",")):
        for c, side, calls in LEVELS:
            tokens = 4 * side * side
            q, k, v = qkv_slices(b, tokens, c, "cuda", gen)
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            cells, errs = [], []
            for name, backend in backends:
                def call():
                    if backend is None:
                        return F.scaled_dot_product_attention(q, k, v)
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(q, k, v)
                err = "–"
                try:
                    with torch.inference_mode():
                        err = f"{float((call().float() - ref).abs().max()):.1e}"
                        us = graph_time(call, a.reps, a.iters)
                except RuntimeError as exc:
                    us = float("nan")
                    print(f"{name} at {c}x{side}^2: {str(exc).splitlines()[0][:120]}", file=sys.stderr)
                errs.append(err)
                cells.append(f"{us:.1f}")
                if us == us:
                    totals[(b, name)] = totals.get((b, name), 0.0) + calls * us
                else:
                    totals[(b, name)] = float("nan")
            lines.append(f"| {b} | {c} ch, {side}x{side} | {tokens} | {c // HEADS} | {calls} | " + " | ".join(cells)
                         + " | " + ", ".join(errs) + " |")
        lines.append(f"| {b} | **all 16 calls** | | | 16 | "
                     + " | ".join(f"**{totals[(b, n)]:.1f}**" for n, _ in backends) + " | |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_lgm_attention.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
