"""A 3x3 convolution (stride 1, padding 1) of a channels-last image as one Triton implicit-GEMM kernel,
optionally with the preceding GroupNorm's normalisation (+ SiLU) applied as its input is loaded.

For shapes where cuDNN's kernels leave the H200 underused: LGM's conv_in (9 input channels, which cuDNN runs
on a padded copy) and the 3x3 convolutions into 128 channels at 128x128 (benchmarks/results/
probe_implicit_conv_h200.md; ``CHOICES`` lists the measured winners). ``conv3x3(x, w_taps, bias, scale, shift, silu)`` with ``x``
channels-last [N, C, H, W] and ``w_taps = tap_weights(w)`` ([9, Cp, Op]: tap ``t = 3*i + j``, input
channels padded to ``Cp``, output channels to ``Op``, zeros in the padding) computes

    a[n, c, y, x] = act(x[n, c, y, x] * scale[n, c] + shift[n, c])   (fp32, rounded once to x.dtype;
                                                                     act = SiLU or identity; without
                                                                     scale/shift a = x)
    out[n, o, y, x] = sum over taps (i, j) and channels c of a[n, c, y + i - 1, x + j - 1] * w[o, c, i, j]
                      (+ bias[o]); a = 0 outside the image (the zero padding of the activation)

in float32 accumulation, rounded once to ``x.dtype``: ``F.conv2d(act(x * scale + shift), w, bias,
padding=1)`` where the prologue rounds exactly as ``fused_norm``'s apply kernel does (same products, summed in
another order). ``scale``/``shift`` [N, C] float32 are what ``fused_norm.group_norm_scale_shift`` returns.

The prologue saves the GroupNorm's apply pass but normalises (and takes the sigmoid of) every input element
once per tap, nine times: on the H200 it was ~3x slower than GroupNorm then cuDNN (docs/benchmarks.md), so LGM
does not use it. The shapes LGM runs here, and their tiles, are the measured ``CHOICES``.

Program layout: a [BLOCK_M pixels, BLOCK_N output channels] tile of the output; the reduction loops over
the nine taps x ``Cp / BLOCK_K`` channel blocks as one loop (so Triton pipelines its loads), loading for
each step the pixels' shifted source rows (contiguous channels, masked at the image border) and the
[BLOCK_K, BLOCK_N] weight block. Programs run pixel-block major with the output-channel blocks of one pixel
block adjacent, so the input tile is reused from L2. This module imports Triton; import it lazily.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

CHANNEL_ALIGN = 16  # input and output channels of the tap weights are padded to a multiple of this


@dataclass(frozen=True)
class ConvConfig:
    """Tile sizes and launch parameters (``block_k`` must divide the padded input channels). ``block_h`` 0:
    ``_conv3x3`` (gathered loads, ``block_m`` consecutive pixels); ``block_h`` > 0: ``_conv3x3_tma``, a
    ``block_h`` x ``block_m // block_h`` spatial tile loaded per tap by the tensor-memory accelerator."""

    block_m: int = 128
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3
    block_h: int = 0


def padded(c: int) -> int:
    """``c`` rounded up to a multiple of ``CHANNEL_ALIGN``."""
    return -(-c // CHANNEL_ALIGN) * CHANNEL_ALIGN


def tap_weights(w: torch.Tensor) -> torch.Tensor:
    """[O, C, 3, 3] -> [9, Cp, Op] (``padded`` channels, zeros there): ``[3*i + j, c, o] = w[o, c, i, j]``."""
    if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"tap_weights takes a [O, C, 3, 3] kernel, got {tuple(w.shape)}")
    o, c = w.shape[:2]
    out = w.new_zeros((9, padded(c), padded(o)))
    out[:, :c, :o] = w.permute(2, 3, 1, 0).reshape(9, c, o)
    return out


# Measured winners on the H200 (compute capability 9.0; Triton 3.6, torch 2.11, cuDNN 9.19, fp16; benchmarks/
# results/probe_implicit_conv_h200.md): (input channels, output channels, images, height, width) -> the tile
# that beat cuDNN there by more than 3 %, its output checked against cuDNN's eagerly and replayed from a CUDA
# graph. LGM's fused path asks ``choose`` for each 3x3 convolution; shapes not listed (and other GPUs) run on
# cuDNN. µs per call, cuDNN -> this kernel, in the comments.
_GATHER_IN = dict(block_m=128, block_n=64, block_k=16, num_warps=4)
_TMA_128 = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
CHOICES_CAPABILITY = (9, 0)
CHOICES_DTYPE = torch.float16
CHOICES: dict = {
    # LGM big, batch 1 (4 views)
    (9, 64, 4, 256, 256): ConvConfig(**_GATHER_IN, num_stages=3),      # conv_in (cuDNN on a padded copy) 91.7 -> 55.1
    (128, 128, 4, 128, 128): ConvConfig(**_TMA_128, block_h=8),        # 59.6 -> 34.2 (6 calls)
    (192, 128, 4, 128, 128): ConvConfig(**_TMA_128, block_h=8),        # 76.6 -> 48.2
    (256, 128, 4, 128, 128): ConvConfig(**_TMA_128, block_h=8),        # 94.7 -> 64.2
    (384, 128, 4, 128, 128): ConvConfig(**_TMA_128, block_h=4),        # 99.6 -> 94.1
    (128, 256, 4, 64, 64): ConvConfig(**_TMA_128, block_h=4),          # 19.3 -> 17.7
    # LGM big, batch 4 (16 views): cuDNN wins the rest there
    (9, 64, 16, 256, 256): ConvConfig(**_GATHER_IN, num_stages=4),     # conv_in 357.7 -> 206.5
}


def choose(c: int, o: int, n: int, h: int, w: int, device: torch.device | None = None,
           dtype: torch.dtype | None = None) -> ConvConfig | None:
    """The measured tile for this convolution (``CHOICES``), or None: cuDNN is the faster, the shape was not
    measured, ``dtype`` is not ``CHOICES_DTYPE`` or ``device`` (a CUDA device) is not of
    ``CHOICES_CAPABILITY`` (the tiles were tuned and checked there, in that dtype)."""
    cfg = CHOICES.get((c, o, n, h, w))
    if cfg is None or (dtype is not None and dtype != CHOICES_DTYPE):
        return None
    if device is None or device.type != "cuda":
        return cfg  # no device given, or the interpreter (tests): the table as it is
    return cfg if torch.cuda.get_device_capability(device) == CHOICES_CAPABILITY else None


def load_choices(path) -> dict:
    """Replace ``CHOICES`` with the winners a probe run wrote (``probe_implicit_conv.py --out``:
    ``implicit_conv_choices.json``, a list of {"shape": [c, o, n, h, w], "config": {...}}); returns them."""
    import json
    from pathlib import Path

    rows = json.loads(Path(path).read_text())
    CHOICES.clear()
    CHOICES.update({tuple(r["shape"]): ConvConfig(**r["config"]) for r in rows})
    return CHOICES


def default_config(c: int, o: int, pixels: int = 0) -> ConvConfig:
    """The gathered-load tile for ``c`` input and ``o`` output channels (``pixels``, N*H*W, unused for now):
    BLOCK_K the largest of 64/32/16 dividing the padded channels, BLOCK_N the power of two covering the output
    channels, at most 128 (the kernel masks the rest)."""
    cp, op = padded(c), padded(o)
    block_k = next(k for k in (64, 32, 16) if cp % k == 0)
    block_n = min(128, triton.next_power_of_2(op))
    return ConvConfig(block_m=128, block_n=block_n, block_k=block_k, num_warps=4 if block_n <= 64 else 8,
                      num_stages=3)


@triton.jit
def _conv3x3(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, y_ptr, M, H, W, C, O, CP, OP, KB,
             HAS_BIAS: tl.constexpr, PROLOGUE: tl.constexpr, SILU: tl.constexpr, IEEE: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program ``pid``: output pixels ``pm*BLOCK_M..`` (of N*H*W, row-major over n, y, x) x output channels
    ``pn*BLOCK_N..``; ``KB = CP // BLOCK_K`` channel blocks per tap. With ``PROLOGUE`` a pixel block lies in
    one image (the wrapper checks H*W % BLOCK_M == 0) and the input is normalised as it is loaded."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(O, BLOCK_N)
    pm = pid // num_n
    pn = pid % num_n
    m = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    o = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = m < M
    xx = m % W
    yy = (m // W) % H
    n0 = (pm * BLOCK_M) // (H * W)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, 9 * KB):
        t = step // KB
        k = (step % KB) * BLOCK_K + rk
        di = t // 3 - 1
        dj = t % 3 - 1
        sy = yy + di
        sx = xx + dj
        ok = m_ok & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        k_ok = k < C
        src = (m + di * W + dj).to(tl.int64) * C
        a = tl.load(x_ptr + src[:, None] + k[None, :], mask=ok[:, None] & k_ok[None, :], other=0.0)
        if PROLOGUE:
            sc = tl.load(scale_ptr + n0 * C + k, mask=k_ok, other=0.0)
            sh = tl.load(shift_ptr + n0 * C + k, mask=k_ok, other=0.0)
            v = a.to(tl.float32) * sc[None, :] + sh[None, :]
            if SILU:
                v = v * tl.sigmoid(v)
            a = tl.where(ok[:, None] & k_ok[None, :], v, 0.0).to(x_ptr.dtype.element_ty)
        b = tl.load(w_ptr + (t * CP + k)[:, None] * OP + o[None, :], mask=(o < OP)[None, :], other=0.0)
        if IEEE:  # float32 inputs: full-precision products (the default would round them to TF32)
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o < O, other=0.0).to(tl.float32)[None, :]
    out = m.to(tl.int64)[:, None] * O + o[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & (o < O)[None, :])


@triton.jit
def _conv3x3_tma(x_desc, w_desc, y_desc, bias_ptr, H, W, O, CP, KB, IEEE: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program ``pid``: a BLOCK_H x BLOCK_W tile of output pixels of one image x BLOCK_N output channels. Each
    reduction step loads the tile's source box for tap (i, j), shifted by (i - 1, j - 1), as one TMA copy of
    the NHWC input (``x_desc``: [N, H, W, C], box [1, BLOCK_H, BLOCK_W, BLOCK_K]); the copy zero-fills what
    lies outside the image, which is the convolution's zero padding. ``w_desc``: [9*CP, OP]; ``y_desc``:
    [N, H, W, O] (stores are clipped at the image edge)."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(O, BLOCK_N)
    tiles_w = tl.cdiv(W, BLOCK_W)
    tiles_h = tl.cdiv(H, BLOCK_H)
    pn = pid % num_n
    pt = pid // num_n
    x0 = (pt % tiles_w) * BLOCK_W
    y0 = ((pt // tiles_w) % tiles_h) * BLOCK_H
    n = pt // (tiles_w * tiles_h)
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_N), dtype=tl.float32)
    for step in range(0, 9 * KB):
        t = step // KB
        k0 = (step % KB) * BLOCK_K
        a = x_desc.load([n, y0 + t // 3 - 1, x0 + t % 3 - 1, k0]).reshape(BLOCK_H * BLOCK_W, BLOCK_K)
        b = w_desc.load([t * CP + k0, pn * BLOCK_N])
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    if HAS_BIAS:
        o = pn * BLOCK_N + tl.arange(0, BLOCK_N)
        acc += tl.load(bias_ptr + o, mask=o < O, other=0.0).to(tl.float32)[None, :]
    y_desc.store([n, y0, x0, pn * BLOCK_N], acc.to(y_desc.dtype).reshape(1, BLOCK_H, BLOCK_W, BLOCK_N))


def supports(x: torch.Tensor, w_taps: torch.Tensor, prologue: bool = False,
             config: ConvConfig | None = None, out_channels: int | None = None) -> bool:
    """Whether ``conv3x3`` takes these with this tile: a 4-D channels-last fp16/bf16/fp32 ``x`` of C channels and a
    [9, padded(C), Op] ``w_taps`` of its dtype and device; with the prologue, pixel blocks must not straddle
    two images (H*W a multiple of the config's BLOCK_M); a TMA tile (``block_h``) also needs what TMA takes
    (see below; ``conv3x3`` runs the gathered kernel instead)."""
    if x.dim() != 4 or w_taps.dim() != 3 or x.dtype != w_taps.dtype or x.device != w_taps.device:
        return False
    n, c, h, w = x.shape
    cfg = config or default_config(c, w_taps.shape[2], n * h * w)
    ok = (x.is_contiguous(memory_format=torch.channels_last) and w_taps.shape[0] == 9
          and w_taps.shape[1] == padded(c) and w_taps.shape[2] % CHANNEL_ALIGN == 0 and w_taps.is_contiguous()
          and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and x.numel() < 2 ** 31
          and n * h * w * w_taps.shape[2] < 2 ** 31 and padded(c) % cfg.block_k == 0
          and (not prologue or (h * w) % cfg.block_m == 0))
    if ok and cfg.block_h:  # TMA: 16-byte aligned rows of whole channels (no padding of C), no prologue
        # KB >= 2: with one channel block per tap (64 channels, block_k 64) Triton 3.6's TMA tiles gave wrong
        # outputs on the H200 for most tile shapes (probe_implicit_conv_h200.md, "rejected")
        # and 16-byte rows of the ``out_channels`` (default: all of w_taps's) outputs for the TMA store
        o = w_taps.shape[2] if out_channels is None else out_channels
        ok = (not prologue and c == padded(c) and c > cfg.block_k and cfg.block_m % cfg.block_h == 0
              and x.data_ptr() % 16 == 0 and (o * x.element_size()) % 16 == 0 and _tma_available(x.device))
    return ok


def _tma_available(device: torch.device) -> bool:
    """Whether this Triton has host-side tensor descriptors (``triton.tools.tensor_descriptor``) and the GPU
    a tensor-memory accelerator (compute capability 9.0+; the interpreter emulates it)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9


def conv3x3(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor | None = None, out_channels: int | None = None,
            scale: torch.Tensor | None = None, shift: torch.Tensor | None = None, silu: bool = False,
            config: ConvConfig | None = None) -> torch.Tensor:
    """``F.conv2d(act(x * scale + shift), w, bias, padding=1)`` (see the module docstring) for a channels-last
    ``x`` [N, C, H, W] and ``w_taps = tap_weights(w)``; ``out_channels`` (default: the padded count of
    ``w_taps``) drops padded output channels; ``scale``/``shift`` [N, C] float32 (both or neither) the
    per-sample affine of a GroupNorm, ``silu`` applies SiLU after it. Channels-last [N, O, H, W] output of
    ``x``'s dtype."""
    prologue = scale is not None or shift is not None
    if prologue and (scale is None or shift is None):
        raise ValueError("conv3x3 takes scale and shift together")
    if silu and not prologue:
        raise ValueError("conv3x3's silu applies after the scale/shift prologue; pass scale and shift")
    n, c, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    cfg = config or (default_config(c, w_taps.shape[2], n * h * w) if w_taps.dim() == 3 else ConvConfig())
    if cfg.block_h and w_taps.dim() == 3 and not supports(x, w_taps, prologue, cfg, out_channels):
        cfg = default_config(c, w_taps.shape[2], n * h * w)  # TMA does not take these: the gathered-load kernel
    if not supports(x, w_taps, prologue, cfg):
        raise ValueError(f"conv3x3 takes a channels-last [N, C, H, W] x and [9, padded(C), Op] tap weights of "
                         f"its dtype and device (prologue: H*W a multiple of {cfg.block_m}); got x "
                         f"{tuple(x.shape)} {x.stride()} {x.dtype}, w_taps {tuple(w_taps.shape)} {w_taps.dtype}")
    op = w_taps.shape[2]
    o = op if out_channels is None else int(out_channels)
    if not 0 < o <= op:
        raise ValueError(f"out_channels must be in 1..{op}, got {o}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"bias must be [O] = [{o}], got {tuple(bias.shape)}")
    if prologue:
        for name, t in (("scale", scale), ("shift", shift)):
            if tuple(t.shape) != (n, c) or t.dtype != torch.float32 or t.device != x.device:
                raise ValueError(f"{name} must be float32 [N, C] = [{n}, {c}] on {x.device}, got "
                                 f"{tuple(t.shape)} {t.dtype} {t.device}")
        scale, shift = scale.contiguous(), shift.contiguous()
    out = torch.empty((n, o, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    num_pix = n * h * w
    if num_pix == 0:
        return out
    ieee = x.dtype == torch.float32
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if cfg.block_h:
            _launch_tma(x, w_taps, bias, out, o, ieee, cfg)
            return out
        grid = (triton.cdiv(num_pix, cfg.block_m) * triton.cdiv(o, cfg.block_n),)
        _conv3x3[grid](x, w_taps, out if bias is None else bias.contiguous(), scale if prologue else out,
                       shift if prologue else out, out, num_pix, h, w, c, o, padded(c), op, padded(c) // cfg.block_k,
                       HAS_BIAS=bias is not None, PROLOGUE=prologue, SILU=bool(silu), IEEE=ieee,
                       BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                       num_stages=cfg.num_stages)
    return out


def _launch_tma(x, w_taps, bias, out, o, ieee, cfg):
    """``_conv3x3_tma`` over NHWC views of ``x`` and ``out`` (host-side descriptors: under a CUDA graph they
    are encoded once, at capture)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    n, c, h, w = x.shape
    bh, bw = cfg.block_h, cfg.block_m // cfg.block_h
    xv, yv = x.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)  # [N, H, W, C] views of the NHWC memory
    wv = w_taps.view(-1, w_taps.shape[2])
    x_desc = TensorDescriptor(xv, list(xv.shape), list(xv.stride()), [1, bh, bw, cfg.block_k])
    w_desc = TensorDescriptor(wv, list(wv.shape), list(wv.stride()), [cfg.block_k, cfg.block_n])
    y_desc = TensorDescriptor(yv, list(yv.shape), list(yv.stride()), [1, bh, bw, cfg.block_n])
    grid = (n * triton.cdiv(h, bh) * triton.cdiv(w, bw) * triton.cdiv(o, cfg.block_n),)
    _conv3x3_tma[grid](x_desc, w_desc, y_desc, out if bias is None else bias.contiguous(), h, w, o, c,
                       c // cfg.block_k, IEEE=ieee, HAS_BIAS=bias is not None, BLOCK_H=bh, BLOCK_W=bw,
                       BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
