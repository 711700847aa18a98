"""GroupNorm (+ optional SiLU) as three small Triton kernels, for the fp16/bf16 CUDA inference path of
LGM's UNet and the multi-view diffusion UNet; and GEGLU (``geglu``, the diffusion transformers'
feed-forward gate) as one kernel.

``group_norm(x, weight, bias, num_groups, eps, silu)`` equals
``F.group_norm(x.float(), num_groups, weight.float(), bias.float(), eps)`` (then ``F.silu`` when
``silu``), rounded once to ``x.dtype``. It replaces torch's eager GroupNorm, whose moments kernel plus
non-vectorised apply kernel on channels-last tensors plus the separate SiLU dominate LGM's eager profile
(benchmarks/results/probe_lgm_kernels_h200.md). Used by ``lgm_core.models.unet.GroupNorm32`` only under
the conditions documented there; this module imports Triton at import time, so import it lazily.

Layouts: 4-D ``[N, C, H, W]`` tensors either contiguous (NCHW in memory) or channels-last (NHWC in
memory); H and W are treated as one pixel axis ``P = H*W``, so a sample is a ``[C, P]`` (NCHW) or
``[P, C]`` (NHWC) matrix, chosen by the ``CHANNELS_LAST`` constexpr; tiles are ~TILE elements, long on the
memory-contiguous axis. The output has the input's layout and dtype.
Any C divisible by ``num_groups`` (not only powers of two) and any H, W.

Dtypes: fp16, bf16 and fp32 inputs (LGM only routes fp16/bf16 here); the affine weight and bias may be
of any float dtype. All arithmetic is float32.

Numerics: a group of at most ``ONE_PASS_MAX`` elements (0 by default, i.e. off until measured on a GPU;
32768 would cover the diffusion UNet's groups and LGM's from 64x64 pixels down) is one program of
``_group_norm_one_pass``: it loops over its pixels three times (sum -> exact mean;
squared deviations -> biased variance; normalise + affine (+ SiLU) -> store), the group's data staying in
L1/L2 between the passes, one launch and no partials in memory. A larger group (LGM big from 2 channels x
65536 pixels to 8 channels x 16384) need not fit one program and would give too few programs, so
1. ``_partial_stats``: each program takes a tile of BLOCK_C channels x BLOCK_P pixels of one sample and
   writes, per channel, the tile's mean and M2 (sum of squared deviations from that mean, computed
   two-pass from registers, so large means do not cancel);
2. ``_finalize``: one program per (sample, group) merges its channels' partials with Chan's formula
   (two passes over the partials: the exact group mean, then ``sum M2_i + n_i (mean_i - mean)^2``),
   giving the biased variance, ``rstd = 1/sqrt(var + eps)``, and folds the affine into a per-channel
   ``scale = rstd * weight``, ``shift = bias - mean * scale``;
3. ``_apply``: ``y = x * scale + shift`` (then ``y * sigmoid(y)``), rounded to the output dtype once.
``add`` (optional ``[N, C]``, the diffusion ResBlock's timestep embedding) is added to every pixel of
sample n, channel c before the statistics: ``group_norm(x + add[:, :, None, None])`` with the sum in fp32
(torch's path rounds it to ``x.dtype`` first). Besides the fp32 summation order, the one rounding is the
only difference from torch's fp16 path,
which rounds the normalised value and then the separate SiLU's result (so outputs differ by at most
about one fp16/bf16 ulp).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

TILE = 4096  # elements per stats/apply tile (fp32 registers: 32 per thread at 4 warps)
REDUCE_BLOCK = 1024  # partials merged per loop step in _finalize
# Largest group (channels x pixels) normalised by one program of _group_norm_one_pass; 0 = never. Off until
# measured on a GPU against the split reduction (it is checked for correctness in the tests; the device was
# not available after it was written): benchmarks/probe_mv_kernels.py --one-pass 32768 compares both.
ONE_PASS_MAX = 0
ONE_PASS_TILE = 2048  # elements per loop step of _group_norm_one_pass


@triton.jit
def _offsets(c, p, C, P, CHANNELS_LAST: tl.constexpr):
    """[BLOCK_C, BLOCK_P] element offsets within one sample; the unit stride is literal so that the
    compiler sees which axis is contiguous (and vectorises along it)."""
    if CHANNELS_LAST:
        return c[:, None] + p[None, :] * C
    return c[:, None] * P + p[None, :]


@triton.jit
def _load_tile(x_ptr, C, P, stride_n, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's tile (grid: pixel block, channel block, sample): sample n, block index pb,
    channels c [BLOCK_C] and their mask, element offsets and mask [BLOCK_C, BLOCK_P], values x in fp32."""
    pb = tl.program_id(0)
    cb = tl.program_id(1)
    n = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    mask = cmask[:, None] & (p < P)[None, :]
    offs = n.to(tl.int64) * stride_n + _offsets(c, p, C, P, CHANNELS_LAST)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return n, pb, c, cmask, offs, mask, x


@triton.jit(do_not_specialize=["num_pb"])
def _partial_stats(x_ptr, mean_ptr, m2_ptr, C, P, stride_n, num_pb,
                   CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n, pb, c, cmask, offs, mask, x = _load_tile(x_ptr, C, P, stride_n, CHANNELS_LAST, BLOCK_C, BLOCK_P)
    cnt = tl.minimum(P - pb * BLOCK_P, BLOCK_P).to(tl.float32)
    mean = tl.sum(x, axis=1) / cnt
    d = tl.where(mask, x - mean[:, None], 0.0)
    m2 = tl.sum(d * d, axis=1)
    out = (n * C + c) * num_pb + pb  # partials laid out [N, C, num_pb]
    tl.store(mean_ptr + out, mean, mask=cmask)
    tl.store(m2_ptr + out, m2, mask=cmask)


@triton.jit(do_not_specialize=["C", "CG", "P", "num_pb", "tile_p", "groups"])  # one JIT variant per BLOCK_CG
def _finalize(mean_ptr, m2_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, C, CG, P, num_pb, tile_p, groups, eps,
              BLOCK_CG: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // groups
    g = pid % groups
    base = (n * C + g * CG) * num_pb  # this group's CG * num_pb partials are contiguous
    total = CG * num_pb
    r = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, total, BLOCK_R):
        k = start + r
        km = k < total
        cnt = tl.minimum(P - (k % num_pb) * tile_p, tile_p).to(tl.float32)
        acc += tl.where(km, cnt * tl.load(mean_ptr + base + k, mask=km, other=0.0), 0.0)
    count = (P * CG).to(tl.float32)
    mean = tl.sum(acc, axis=0) / count
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, total, BLOCK_R):
        k = start + r
        km = k < total
        cnt = tl.minimum(P - (k % num_pb) * tile_p, tile_p).to(tl.float32)
        dm = tl.load(mean_ptr + base + k, mask=km, other=0.0) - mean
        acc += tl.where(km, tl.load(m2_ptr + base + k, mask=km, other=0.0) + cnt * dm * dm, 0.0)
    var = tl.sum(acc, axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    ch = tl.arange(0, BLOCK_CG)
    cm = ch < CG
    c = g * CG + ch
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    scale = w * rstd
    tl.store(scale_ptr + n * C + c, scale, mask=cm)
    tl.store(shift_ptr + n * C + c, b - mean * scale, mask=cm)


@triton.jit
def _apply(x_ptr, y_ptr, scale_ptr, shift_ptr, C, P, stride_n,
           CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n, pb, c, cmask, offs, mask, x = _load_tile(x_ptr, C, P, stride_n, CHANNELS_LAST, BLOCK_C, BLOCK_P)
    scale = tl.load(scale_ptr + n * C + c, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + n * C + c, mask=cmask, other=0.0)
    y = x * scale[:, None] + shift[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _group_tile(x_ptr, base, c, cm, start, C, P, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr):
    """One loop step of ``_group_norm_one_pass``: element offsets, mask and fp32 values (0 where masked) of
    the group's channels ``c`` (mask ``cm``) at pixels ``start .. start + BLOCK_P``."""
    p = start + tl.arange(0, BLOCK_P)
    mask = cm[:, None] & (p < P)[None, :]
    offs = base + _offsets(c, p, C, P, CHANNELS_LAST)
    return offs, mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit(do_not_specialize=["C", "CG", "P", "groups"])
def _group_norm_one_pass(x_ptr, y_ptr, w_ptr, b_ptr, add_ptr, C, CG, P, stride_n, groups, eps,
                         HAS_ADD: tl.constexpr, CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    n = pid // groups
    g = pid % groups
    ch = tl.arange(0, BLOCK_C)
    cm = ch < CG
    c = g * CG + ch
    base = n.to(tl.int64) * stride_n
    if HAS_ADD:
        shift_in = tl.load(add_ptr + n * C + c, mask=cm, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        offs, mask, x = _group_tile(x_ptr, base, c, cm, start, C, P, CHANNELS_LAST, BLOCK_P)
        if HAS_ADD:
            x = tl.where(mask, x + shift_in[:, None], 0.0)
        acc += x
    count = (CG * P).to(tl.float32)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        offs, mask, x = _group_tile(x_ptr, base, c, cm, start, C, P, CHANNELS_LAST, BLOCK_P)
        if HAS_ADD:
            x = x + shift_in[:, None]
        d = tl.where(mask, x - mean, 0.0)
        acc += d * d
    var = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    scale = w * rstd
    shift = b - mean * scale
    if HAS_ADD:
        shift = shift + shift_in * scale  # (x + a) * scale + shift, with x as loaded
    for start in range(0, P, BLOCK_P):
        offs, mask, x = _group_tile(x_ptr, base, c, cm, start, C, P, CHANNELS_LAST, BLOCK_P)
        y = x * scale[:, None] + shift[:, None]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def layout_of(x: torch.Tensor):
    """``"contiguous"``, ``"channels_last"`` or ``None`` (a layout these kernels do not take)."""
    if x.dim() != 4:
        return None
    if x.is_contiguous():
        return "contiguous"
    if x.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return None


def supports(x: torch.Tensor, num_groups: int) -> bool:
    """Whether ``group_norm`` takes this input (4-D, NCHW or NHWC memory, C divisible by the groups,
    fewer than 2**31 elements, a float dtype)."""
    return (layout_of(x) is not None and x.shape[1] % num_groups == 0 and x.numel() < 2 ** 31
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32))


def _blocks(C: int, P: int, channels_last: bool):
    """Tile shape (BLOCK_C, BLOCK_P) of ~TILE elements whose contiguous axis is the memory-fast one."""
    if channels_last:
        block_c = min(C & -C, 128)  # the largest power of two dividing C: no masked-off lanes (C = 192: 64)
        block_p = min(triton.next_power_of_2(P), TILE // block_c)
    else:
        block_p = min(triton.next_power_of_2(P), TILE // 4)
        block_c = min(triton.next_power_of_2(C), TILE // block_p)
    return block_c, block_p


def group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
               silu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
    """GroupNorm of a 4-D tensor (see the module docstring); ``silu`` applies SiLU to the result;
    ``add`` ([N, C]) is added per sample and channel before the statistics."""
    if not supports(x, num_groups):
        raise ValueError(f"fused group_norm takes 4-D NCHW/NHWC float tensors with C % {num_groups} == 0; "
                         f"got shape {tuple(x.shape)}, strides {x.stride()}, {x.dtype}")
    N, C, H, W = x.shape
    if add is not None and tuple(add.shape) != (N, C):
        raise ValueError(f"add must be [N, C] = [{N}, {C}], got {tuple(add.shape)}")
    P = H * W
    channels_last = layout_of(x) == "channels_last"
    y = torch.empty_like(x)  # keeps the memory format
    if x.numel() == 0:
        return y
    stride_n = x.stride(0)
    cg = C // num_groups
    if cg * P <= ONE_PASS_MAX:
        block_c = triton.next_power_of_2(cg)
        block_p = max(1, min(triton.next_power_of_2(P), ONE_PASS_TILE // block_c))
        add_arg = add.contiguous() if add is not None else x  # x: any pointer, unread without HAS_ADD
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _group_norm_one_pass[(N * num_groups,)](
                x, y, weight, bias, add_arg, C, cg, P, stride_n, num_groups, eps, HAS_ADD=add is not None,
                CHANNELS_LAST=channels_last, SILU=bool(silu), BLOCK_C=block_c, BLOCK_P=block_p)
        return y
    if add is not None:  # the split-reduction kernels take no add: form the sum first
        x = (x + add[:, :, None, None].to(x.dtype)).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        stride_n = x.stride(0)
    block_c, block_p = _blocks(C, P, channels_last)
    num_pb, num_cb = triton.cdiv(P, block_p), triton.cdiv(C, block_c)
    grid = (num_pb, num_cb, N)
    mean = torch.empty((N, C, num_pb), device=x.device, dtype=torch.float32)
    m2 = torch.empty_like(mean)
    scale = torch.empty((N, C), device=x.device, dtype=torch.float32)
    shift = torch.empty_like(scale)
    # Triton launches on the current GPU and its current stream: make that x's GPU (e.g. cuda:1)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _partial_stats[grid](x, mean, m2, C, P, stride_n, num_pb,
                             CHANNELS_LAST=channels_last, BLOCK_C=block_c, BLOCK_P=block_p)
        _finalize[(N * num_groups,)](mean, m2, weight, bias, scale, shift, C, cg, P, num_pb, block_p, num_groups,
                                     eps, BLOCK_CG=triton.next_power_of_2(cg), BLOCK_R=REDUCE_BLOCK)
        _apply[grid](x, y, scale, shift, C, P, stride_n,
                     CHANNELS_LAST=channels_last, SILU=bool(silu), BLOCK_C=block_c, BLOCK_P=block_p)
    return y


# ------------------------------------------------------------------------------------------- GEGLU
GEGLU_BLOCK = 1024  # output columns per program


@triton.jit
def _geglu(h_ptr, y_ptr, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    value = tl.load(h_ptr + row * 2 * D + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(h_ptr + row * 2 * D + D + cols, mask=mask, other=0.0).to(tl.float32)
    y = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
    tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def geglu_supports(h: torch.Tensor) -> bool:
    """Whether ``geglu`` takes ``h``: contiguous, a float dtype, an even last axis, < 2**31 elements."""
    return (h.dim() >= 1 and h.is_contiguous() and h.shape[-1] % 2 == 0 and h.numel() < 2 ** 31
            and h.dtype in (torch.float16, torch.bfloat16, torch.float32))


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` (exact erf GELU) of ``h = [..., value ‖ gate]`` (last axis 2*D) -> ``[..., D]``
    in ``h``'s dtype. float32 arithmetic, one rounding (torch's fp16 path rounds the GELU and then the
    product: at most about one ulp apart)."""
    if not geglu_supports(h):
        raise ValueError(f"fused geglu takes a contiguous float tensor with an even last axis; got shape "
                         f"{tuple(h.shape)}, {h.dtype}, contiguous={h.is_contiguous()}")
    D = h.shape[-1] // 2
    y = torch.empty(*h.shape[:-1], D, device=h.device, dtype=h.dtype)
    rows = h.numel() // (2 * D) if D else 0
    if rows == 0:
        return y
    with torch.cuda.device(h.device) if h.is_cuda else contextlib.nullcontext():
        _geglu[(rows, triton.cdiv(D, GEGLU_BLOCK))](h, y, D, BLOCK=GEGLU_BLOCK)
    return y
