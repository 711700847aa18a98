"""A 3x3 convolution (stride 1, padding 1) of a small channels-last image as one GEMM over its nine taps
and one Triton kernel that sums the shifted tap products: for LGM's 8x8 levels, where cuDNN's implicit
GEMM fills a fraction of the SMs (benchmarks/results/probe_convs_h200.md: 1024 channels at 8x8 run at
~210 TFLOP/s).

``tap_conv3x3(x, w_taps)`` with ``x`` channels-last [N, C, H, W] and ``w_taps = tap_weight(w)``
([C, 9*O], column block ``t = 3*i + j`` holding ``w[:, :, i, j].T``) computes

    Y = x_pixels [N*H*W, C] @ w_taps                       (cuBLAS; float32 output, or x.dtype)
    out[n, :, y, x] = sum over taps (i, j) whose source pixel (y + i - 1, x + j - 1) lies in the image
                      of Y[that pixel, block t] (+ bias)  (``_tap_sum``, float32, one rounding)

which is ``F.conv2d(x, w, bias, padding=1)``: the same products, summed in another order (float32 throughout
when ``Y`` is float32). The output is channels-last [N, O, H, W] of ``x``'s dtype. ``Y`` holds 9*O
values per pixel, so this form is for images of few pixels. This module imports Triton; import it lazily.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

SUM_BLOCK_P = 32  # pixels per program of _tap_sum
SUM_BLOCK_O = 128  # output channels per program of _tap_sum


def tap_weight(w: torch.Tensor) -> torch.Tensor:
    """[O, C, 3, 3] -> [C, 9*O]: column ``t*O + o`` is ``w[o, :, i, j]`` with ``t = 3*i + j``."""
    if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        raise ValueError(f"tap_weight takes a [O, C, 3, 3] kernel, got {tuple(w.shape)}")
    o, c = w.shape[:2]
    return w.permute(1, 2, 3, 0).reshape(c, 9 * o).contiguous()


@triton.jit
def _tap_sum(y_ptr, bias_ptr, out_ptr, num_pix, H, W, O, HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr,
             BLOCK_O: tl.constexpr):
    """Program (pixel block, channel block) of ``out`` (NHWC [N, H, W, O]): the sum over the nine taps of
    ``Y`` (row per pixel, [N*H*W, 9*O]) at the tap's source pixel, zero outside the image (+ ``bias[o]``)."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    pm = pix < num_pix
    om = o < O
    xx = pix % W
    yy = (pix // W) % H
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=om, other=0.0).to(tl.float32)[None, :]
    for t in tl.static_range(9):
        di = t // 3 - 1
        dj = t % 3 - 1
        sy = yy + di
        sx = xx + dj
        ok = pm & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        src = (pix + di * W + dj).to(tl.int64) * (9 * O) + t * O
        acc += tl.load(y_ptr + src[:, None] + o[None, :], mask=ok[:, None] & om[None, :], other=0.0).to(tl.float32)
    tl.store(out_ptr + pix.to(tl.int64)[:, None] * O + o[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=pm[:, None] & om[None, :])


def supports(x: torch.Tensor, w_taps: torch.Tensor) -> bool:
    """Whether ``tap_conv3x3`` takes these: a 4-D channels-last float ``x`` and a [C, 9*O] ``w_taps`` of its
    dtype and device."""
    if x.dim() != 4 or w_taps.dim() != 2 or x.dtype != w_taps.dtype or x.device != w_taps.device:
        return False
    n, c, h, w = x.shape
    return (x.is_contiguous(memory_format=torch.channels_last) and w_taps.shape[0] == c
            and w_taps.shape[1] % 9 == 0 and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and n * h * w * w_taps.shape[1] < 2 ** 31)


def _products(pixels: torch.Tensor, w_taps: torch.Tensor, fp32_products: bool) -> torch.Tensor:
    """``pixels @ w_taps``, in float32 when asked (cuBLAS's fp16/bf16 GEMM with a float32 output)."""
    if fp32_products and pixels.dtype != torch.float32:
        try:
            return torch.mm(pixels, w_taps, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # torch without mm's out_dtype on this device
            return torch.mm(pixels.float(), w_taps.float())
    return pixels @ w_taps


def tap_conv3x3(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor | None = None,
                fp32_products: bool = True) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for channels-last ``x`` [N, C, H, W], ``w_taps = tap_weight(w)``
    and an optional ``bias`` [O]; channels-last [N, O, H, W] output of ``x``'s dtype. ``fp32_products``
    keeps the per-tap products in float32 (else ``x.dtype``: half the traffic, one more rounding per tap)."""
    if not supports(x, w_taps):
        raise ValueError(f"tap_conv3x3 takes a channels-last [N, C, H, W] x and a [C, 9*O] w_taps of its dtype "
                         f"and device; got x {tuple(x.shape)} {x.stride()} {x.dtype}, w_taps "
                         f"{tuple(w_taps.shape)} {w_taps.dtype}")
    n, c, h, w = x.shape
    o = w_taps.shape[1] // 9
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"bias must be [O] = [{o}], got {tuple(bias.shape)}")
    num_pix = n * h * w
    out = torch.empty((n, o, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    if num_pix == 0 or o == 0:
        return out
    products = _products(x.permute(0, 2, 3, 1).reshape(num_pix, c), w_taps, fp32_products)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _tap_sum[(triton.cdiv(num_pix, SUM_BLOCK_P), triton.cdiv(o, SUM_BLOCK_O))](
            products, out if bias is None else bias.contiguous(), out, num_pix, h, w, o, HAS_BIAS=bias is not None,
            BLOCK_P=SUM_BLOCK_P, BLOCK_O=SUM_BLOCK_O)
    return out
