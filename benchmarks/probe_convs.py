"""Every convolution of a network, timed alone: cuDNN's heuristic pick, cuDNN's algorithm search, an
im2col GEMM, and (for the convolutions after a nearest 2x upsampling) the sub-pixel "phase" form.

Issue 15 item 1 asks for LGM big at batch 1 in 5 ms; after the fusions, cuDNN's convolutions are the
largest share of the 7.2 ms (2.97 ms of GPU time, benchmarks/results/probe_lgm_fusion_h200.md). This
probe says which convolutions run far below the GPU's peak and whether another formulation of the same
sum is faster:

* ``cudnn``: ``F.conv2d`` as the network calls it (channels-last fp16, cuDNN's heuristic algorithm);
* ``cudnn_search``: the same with ``torch.backends.cudnn.benchmark = True`` (cuDNN times its algorithms);
* ``gemm``: im2col in NHWC (the k*k shifted windows concatenated along channels) and one cuBLAS GEMM —
  for small pixel counts, where cuDNN's tiles leave SMs idle, cuBLAS may pick split-K;
* ``pad16`` / ``pad32`` (only where the input or output channels are not a multiple of 8): the
  channels zero-padded to 16 / 32 (the input's pad copy included; a padded output is sliced);
* ``taps32`` / ``taps16`` (3x3, stride 1, images whose nine tap products fit ``TAPS_MAX_BYTES``): one
  GEMM of the pixels with the nine taps' weights side by side, then one Triton kernel summing the shifted
  products (``lgm_core.models.tap_conv``), products in float32 / in the input's dtype;
* ``phase`` (only for a 3x3 convolution of a nearest-upsampled input): upsample-then-conv equals four
  2x2 convolutions of the low-resolution input (one per output pixel parity, the 3x3 taps that land on
  the same source pixel summed), run as one convolution with 4x the output channels on the padded
  input, then interleaved: 16/36 of the multiply-adds and no upsampled copy. ``phase_conv`` is the
  convolution alone (what remains when the interleave is folded into a later copy), ``phase`` includes
  the interleave.

Each variant of each distinct convolution is captured ``--reps`` times in one CUDA graph, so launch
overhead is excluded; times are medians of ``--iters`` replays, per call. ``max|d|`` is against
``cudnn``. The table ends with the network's total over all its convolutions for each choice.

    python benchmarks/probe_convs.py --models lgm_b1,lgm_b4 --out $OUT          # H200, ~1 min
    python benchmarks/probe_convs.py --models lgm_b1,mvdream_b1,mvdream_b16 --configs DIR
    python benchmarks/probe_convs.py --quick                                     # CPU smoke: tiny LGM
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from lgm_core.models.unet import phase_kernels  # noqa: E402

try:
    from lgm_core.models import tap_conv as TAP_CONV  # noqa: E402  (imports Triton)
except ImportError:
    TAP_CONV = None


# ------------------------------------------------------------------------------------------- the variants
def im2col_weight(w: torch.Tensor) -> torch.Tensor:
    """[O, C, kh, kw] -> [kh*kw*C, O], rows ordered (i, j, c) like ``im2col_conv``'s columns."""
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()


def im2col_conv(x: torch.Tensor, wm: torch.Tensor, k: int, stride: int, padding: int) -> torch.Tensor:
    """Convolution of a channels-last ``x`` [N, C, H, W] as one GEMM of its im2col matrix with
    ``wm = im2col_weight(w)``; returns a channels-last [N, O, Ho, Wo] view."""
    n, c, h, w = x.shape
    xh = x.permute(0, 2, 3, 1)
    if k == 1 and stride == 1 and padding == 0:
        cols, ho, wo = xh.reshape(-1, c), h, w
    else:
        xp = F.pad(xh, (0, 0, padding, padding, padding, padding))
        ho = (h + 2 * padding - k) // stride + 1
        wo = (w + 2 * padding - k) // stride + 1
        cols = torch.cat([xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                          for i in range(k) for j in range(k)], dim=-1).reshape(-1, k * k * c)
    return (cols @ wm).view(n, ho, wo, -1).permute(0, 3, 1, 2)


def phase_conv(x: torch.Tensor, wp: torch.Tensor, bias, interleave: bool = True) -> torch.Tensor:
    """``conv3x3(upsample2x(x))`` from ``wp = phase_kernels(w)``: one 2x2 convolution with padding 1 of the
    low-resolution input ([N, 4*O, H+1, W+1]), then phase (a, b) at rows a..a+H, columns b..b+W
    interleaved into [N, O, 2H, 2W] (channels-last)."""
    z = F.conv2d(x, wp, None, padding=1)
    if not interleave:
        return z
    n, _, h1, w1 = z.shape
    h, w, o = h1 - 1, w1 - 1, z.shape[1] // 4
    zh = z.permute(0, 2, 3, 1).view(n, h1, w1, 4, o)
    y = torch.empty((n, h, 2, w, 2, o), device=x.device, dtype=x.dtype)
    for a in (0, 1):
        for b in (0, 1):
            y[:, :, a, :, b, :] = zh[:, a:a + h, b:b + w, 2 * a + b, :]
    y = y.view(n, 2 * h, 2 * w, o)
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------- recording
class Signature(collections.namedtuple("Signature", "n c h w o k stride padding bias upsampled")):
    def flops(self) -> float:
        ho = (self.h * (2 if self.upsampled else 1) + 2 * self.padding - self.k) // self.stride + 1
        wo = (self.w * (2 if self.upsampled else 1) + 2 * self.padding - self.k) // self.stride + 1
        return 2.0 * self.n * ho * wo * self.o * self.c * self.k * self.k

    def label(self) -> str:
        up = " after 2x up" if self.upsampled else ""
        return f"{self.n}x{self.c}x{self.h}x{self.w} -> {self.o}, {self.k}x{self.k}/{self.stride}{up}"


def record_convs(module: torch.nn.Module, run) -> collections.Counter:
    """Signatures of every ``nn.Conv2d`` call under ``module`` while ``run()`` executes (with counts). A
    convolution named ``*upsample`` (LGM's UpBlock) or the ``conv`` of an ``Upsample`` module (the
    diffusion UNet) gets its low-resolution input recorded and ``upsampled=True``."""
    seen: collections.Counter = collections.Counter()
    hooks = []
    after_upsampling = {id(m.conv) for m in module.modules() if type(m).__name__ == "Upsample"}
    for name, mod in module.named_modules():
        if not isinstance(mod, torch.nn.Conv2d):
            continue
        upsampled = name.endswith("upsample") or id(mod) in after_upsampling

        def hook(m, inp, out, upsampled=upsampled):
            x = inp[0]
            n, c, h, w = x.shape
            if upsampled:
                h, w = h // 2, w // 2
            seen[Signature(n, c, h, w, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                           m.bias is not None, upsampled)] += 1

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def lgm_signatures(preset: str, batch: int, device, dtype):
    from bench_floor import build_lgm, lgm_config, lgm_input

    if preset == "tiny":
        config = lgm_config(quick=True)
    else:
        from lgm_core.models.lgm import LGMConfig

        config = LGMConfig.preset(preset)
    model = build_lgm(config, device, dtype)
    x = lgm_input(config, batch, device).to(dtype)
    return record_convs(model, lambda: model.forward_gaussians(x))


_PIPELINES: dict = {}


def mv_signatures(kind: str, batch: int, configs: str, device):
    from types import SimpleNamespace

    from bench_floor import build_pipeline, mv_call

    if kind not in _PIPELINES:
        _PIPELINES[kind] = build_pipeline(kind, SimpleNamespace(quick=False, configs=configs), device)
    pipe = _PIPELINES[kind]
    extra = {"prompt": ["a ceramic owl"] * batch} if kind == "mvdream" else {}
    return record_convs(pipe.unet, lambda: mv_call(pipe, kind, 1, **extra))


# ------------------------------------------------------------------------------------------- timing
def graph_time(fn, reps: int, iters: int) -> float:
    """Median µs per call of ``fn`` captured ``reps`` times in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / reps)
    del graph
    return statistics.median(times)


def cpu_time(fn, reps: int, iters: int) -> float:
    import time

    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) * 1e6 / reps)
    return statistics.median(times)


def variants(sig: Signature, device, dtype, gen):
    """name -> zero-argument callable for one signature (inputs fixed inside), and the reference output."""
    x = torch.randn((sig.n, sig.c, sig.h, sig.w), generator=gen).to(device, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn((sig.o, sig.c, sig.k, sig.k), generator=gen) * (sig.c * sig.k * sig.k) ** -0.5)
    b = torch.randn(sig.o, generator=gen) * 0.1 if sig.bias else None
    w_d = w.to(device, dtype).contiguous(memory_format=torch.channels_last)
    b_d = None if b is None else b.to(device, dtype)
    out = {}
    if sig.upsampled:
        def cudnn():
            return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w_d, b_d, sig.stride, sig.padding)
    else:
        def cudnn():
            return F.conv2d(x, w_d, b_d, sig.stride, sig.padding)
    out["cudnn"] = cudnn
    out["cudnn_search"] = cudnn  # timed with cudnn.benchmark on
    wm = im2col_weight(w).to(device, dtype)
    if sig.upsampled:
        def gemm():
            y = im2col_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), wm, sig.k, sig.stride, sig.padding)
            return y if b_d is None else y + b_d[:, None, None]
    else:
        def gemm():
            y = im2col_conv(x, wm, sig.k, sig.stride, sig.padding)
            return y if b_d is None else y + b_d[:, None, None]
    out["gemm"] = gemm
    for width in (16, 32):  # channel counts cuDNN's tensor-core kernels do not take, zero-padded
        if sig.c % 8 and width > sig.c and not sig.upsampled:
            wc = F.pad(w, (0, 0, 0, 0, 0, width - sig.c)).to(device, dtype).contiguous(memory_format=torch.channels_last)
            out[f"pad{width}"] = (lambda wc=wc, width=width: F.conv2d(
                F.pad(x.permute(0, 2, 3, 1), (0, width - sig.c)).permute(0, 3, 1, 2), wc, b_d, sig.stride, sig.padding))
        elif sig.o % 8 and width > sig.o and not sig.upsampled:
            wo = F.pad(w, (0, 0, 0, 0, 0, 0, 0, width - sig.o)).to(device, dtype)
            wo = wo.contiguous(memory_format=torch.channels_last)
            out[f"pad{width}"] = (lambda wo=wo: F.conv2d(x, wo, None, sig.stride, sig.padding)[:, :sig.o])
    if (TAP_CONV is not None and not sig.upsampled and (sig.k, sig.stride, sig.padding) == (3, 1, 1)
            and sig.n * sig.h * sig.w * 9 * sig.o * 4 <= TAPS_MAX_BYTES):
        wt = TAP_CONV.tap_weight(w).to(device, dtype)
        out["taps32"] = lambda: TAP_CONV.tap_conv3x3(x, wt, b_d)
        out["taps16"] = lambda: TAP_CONV.tap_conv3x3(x, wt, b_d, fp32_products=False)
    if sig.upsampled and sig.k == 3 and sig.stride == 1 and sig.padding == 1:
        wp = phase_kernels(w).to(device, dtype).contiguous(memory_format=torch.channels_last)
        out["phase"] = lambda: phase_conv(x, wp, b_d)
        out["phase_conv"] = lambda: phase_conv(x, wp, None, interleave=False)
    return out


NAMES = ("cudnn", "cudnn_search", "gemm", "phase", "phase_conv", "pad16", "pad32", "taps32", "taps16")
TAPS_MAX_BYTES = 64 << 20  # the tap products (float32) a ``taps`` variant may hold


def probe(name: str, signatures: collections.Counter, device, dtype, reps: int, iters: int, lines):
    gen = torch.Generator().manual_seed(0)
    timer = graph_time if device.type == "cuda" else cpu_time
    totals = collections.Counter()
    best_total = 0.0
    header = ("| convolution | calls | GFLOP | " + " | ".join(f"{n} µs" for n in NAMES)
              + " | best TFLOP/s | max\\|d\\| gemm / phase | max\\|d\\| taps32 / taps16 |")
    lines += [f"\n## {name}\n", header, "|" + "---|" * (6 + len(NAMES))]
    for sig, count in sorted(signatures.items(), key=lambda kv: -kv[0].flops() * kv[1]):
        fns = variants(sig, device, dtype, gen)
        ref = fns["cudnn"]().float()
        times = {}
        for v, fn in fns.items():
            search = v == "cudnn_search"
            previous = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = search
            try:
                times[v] = timer(fn, reps, iters)
            except Exception as err:  # a variant that cannot run here is reported, not fatal
                times[v] = float("nan")
                print(f"{name} {sig.label()} {v}: {type(err).__name__}: {err}", file=sys.stderr)
            finally:
                torch.backends.cudnn.benchmark = previous
        d_gemm = (fns["gemm"]().float() - ref).abs().max().item()
        d_phase = (fns["phase"]().float() - ref).abs().max().item() if "phase" in fns else float("nan")
        d_taps = [(fns[v]().float() - ref).abs().max().item() if v in fns else float("nan") for v in ("taps32", "taps16")]
        full = {v: t for v, t in times.items() if v != "phase_conv" and t == t}
        best = min(full.values())
        for v in NAMES:
            t = times.get(v, float("nan"))
            totals[v] += count * (t if t == t else times["cudnn"])
        best_total += count * best
        cells = " | ".join(f"{times[v]:.1f}" if v in times else "" for v in NAMES)
        lines.append(f"| {sig.label()} | {count} | {sig.flops() / 1e9:.2f} | {cells} | "
                     f"{sig.flops() / best / 1e6:.0f} | {d_gemm:.1e} / {d_phase:.1e} | {d_taps[0]:.1e} / {d_taps[1]:.1e} |")
    cells = " | ".join(f"{totals[v] / 1000:.3f} ms" for v in NAMES)
    lines.append(f"| **all convolutions** | {sum(signatures.values())} | "
                 f"{sum(s.flops() * c for s, c in signatures.items()) / 1e9:.1f} | {cells} | best per row: "
                 f"**{best_total / 1000:.3f} ms** | | |")
    lines.append("\n(A variant a convolution lacks counts at its `cudnn` time in the totals; `phase_conv` "
                 "omits the interleave, so its total is a lower bound.)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lgm_b1,lgm_b4",
                    help="comma list of lgm_b<N>, mvdream_b<N>, imagedream_b<N>")
    ap.add_argument("--configs", default=str(REPO / ".device" / "floor" / "mvdream_configs"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run on the tiny LGM")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.quick else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if a.quick:
        a.models, a.reps, a.iters = "lgmtiny_b1", 2, 2
    lines = [f"# Convolution probe\n\n- {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
             f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {dtype}, channels-last, "
             f"{a.reps} calls per CUDA graph, median of {a.iters} replays"]
    for spec in a.models.split(","):
        model, batch = spec.rsplit("_b", 1)
        batch = int(batch)
        if model.startswith("lgm"):
            sigs = lgm_signatures("tiny" if model == "lgmtiny" else "big", batch, device, dtype)
        else:
            sigs = mv_signatures(model, batch, a.configs, device)
        probe(f"{spec} ({sum(sigs.values())} convolutions, {len(sigs)} distinct)", sigs, device, dtype,
              a.reps, a.iters, lines)
        print("\n".join(lines[-len(sigs) - 6:]), flush=True)  # progress: each model's table as it is done
    text = "\n".join(lines) + "\n"
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_convs.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
