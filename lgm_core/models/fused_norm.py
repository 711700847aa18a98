"""GroupNorm (+ optional SiLU) as three small Triton kernels, for the fp16/bf16 CUDA inference path of
LGM's UNet and the multi-view diffusion UNet; GEGLU (``geglu``, the diffusion transformers'
feed-forward gate) as one kernel; and the residual join ``(a + a_bias + b + b_bias) * scale``
(``residual``: LGM's ResnetBlock and attention outputs, with the convolution biases folded in) as one
kernel; LayerNorm with an optional residual add before it (``layer_norm``: the diffusion
transformer blocks) as one kernel; and the interleave of a sub-pixel upsampling convolution's four
phases with its bias, joined to the skip connection it is concatenated with (``phase_upsample``: LGM's
up blocks), as one kernel.

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

Numerics: a group of a power-of-two number of channels whose tile (those channels x its pixels rounded up
to a power of two) has at most ``ONE_PASS_MAX`` elements is one program of ``_group_norm_one_pass``: the
whole group is loaded once into registers (sum -> exact mean; squared deviations from it -> biased
variance; normalise + affine (+ SiLU) -> store), one launch and no partials in memory. Otherwise the split
reduction:
1. ``_partial_stats``: grid (pixel range, channel block, sample), about ``STATS_PROGRAMS_PER_SM`` programs
   per SM; each loops over whole ``STATS_TILE``-element tiles of its pixel range and accumulates, per
   channel c, the shifted sums ``S1 = sum d`` and ``S2 = sum d^2`` of ``d = x - K_c`` elementwise in fp32
   registers (one reduction at the end), where ``K_c`` is the channel's value at its first pixel — the
   same in every program, so the partials of a channel simply add up. A large common mean does not
   cancel (``d`` is measured from a value of the data); what remains is a relative error of the variance
   of about ``(K_c - m)^2 / var`` fp32 epsilons (``m``: the group mean), below half an fp16 ulp of the
   output while the first pixel lies within ~30 standard deviations of the group mean (tested; a
   first pixel 10^4 deviations away costs ~3 half-ulps);
2. ``_finalize``: one program per (sample, group) sums its channels' partials, takes the exact group mean
   ``m = (sum S1 + P sum K_c) / (CG P)`` and the biased variance
   ``(sum_c S2_c - 2 (m - K_c) S1_c + P (m - K_c)^2) / (CG P)``, ``rstd = 1/sqrt(var + eps)``, and folds the affine into a
   per-channel ``scale = rstd * weight``, ``shift = bias - m * scale``;
3. ``_apply``: ``y = x * scale + shift`` (then ``y * sigmoid(y)``), rounded to the output dtype once.
``residual_group_norm`` computes a residual join (``residual``'s ``s``) where the GroupNorm of ``s`` loads
its input (the one-pass program, or ``_partial_stats``, which stores ``s`` for ``_apply``): the same bits
as the two calls, without the residual kernel's launch and one read of ``s``.
``add`` (optional ``[N, C]``, the diffusion ResBlock's timestep embedding, or ``[C]`` for all samples, the
bias of the convolution that produced ``x``, which then runs without it) is added to every pixel of
sample n, channel c before the statistics, in both paths: ``group_norm(x + add[:, :, None, None])`` with
the sum in fp32 (torch's path rounds it to ``x.dtype`` first). Besides the fp32 summation order, the one
rounding is the only difference from torch's fp16 path,
which rounds the normalised value and then the separate SiLU's result (so outputs differ by at most
about one fp16/bf16 ulp).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

TILE = 4096  # elements per _apply tile (fp32 registers: 32 per thread at 4 warps); stats use STATS_TILE
REDUCE_BLOCK = 1024  # partials merged per loop step in _finalize
STATS_PROGRAMS_PER_SM = 8  # _partial_stats programs per SM (each loops over its share of the pixels)
STATS_TILE = 2048  # elements per loop step of a _partial_stats program (H200 sweep: probe_lgm_fusion --sweep)
STATS_WARPS = 4  # warps per _partial_stats program
# Largest register tile (a group's channels x its pixels rounded up to a power of two) that one program of
# _group_norm_one_pass normalises in one launch, for groups whose channel count is a power of two; 0 = never
# (the split reduction, three launches, always). H200, CUDA graphs, LGM big fp16, benchmarks/probe_lgm_fusion.py
# (2026-12-02): with this rule, 5 interleaved rounds: b1 7.69 ms split-only -> 7.28 ms (faster in every round),
# b4 19.65 -> 19.37 ms (4 of 5), GroupNorm kernel time 1.28 -> 0.91 ms; groups of any width there: 7.28 / 19.36 ms.
# Bounds (any width, 3 rounds): b1 6.74 ms off -> 6.73 / 6.53 / 6.34 / 7.19 ms at 4096 / 8192 / 16384 / 32768.
# Groups of 10, 20 or 40 channels (the diffusion UNet's 320 / 640 / 1280) stay on the split reduction: with
# any width, its batch-8 UNet step took 10.39 ms against 8.55 (masked lanes, misaligned channels-last rows).
ONE_PASS_MAX = 16384


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


@triton.jit
def _group_tile(x_ptr, base, c, cm, start, C, P, CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr):
    """One loop step of ``_partial_stats`` and ``_group_norm_one_pass``: element offsets, mask and fp32
    values (0 where masked) of channels ``c`` (mask ``cm``) at pixels ``start .. start + BLOCK_P``."""
    p = start + tl.arange(0, BLOCK_P)
    mask = cm[:, None] & (p < P)[None, :]
    offs = base + _offsets(c, p, C, P, CHANNELS_LAST)
    return offs, mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _joined(a, b_ptr, ab_ptr, bb_ptr, offs, c, cm, mask, res_scale, out_ty: tl.constexpr,
            HAS_A_BIAS: tl.constexpr, HAS_B_BIAS: tl.constexpr):
    """The residual join ``s = ((a + a_bias[c]) + (b + b_bias[c])) * res_scale`` of fp32 values ``a`` (at
    ``offs``, mask ``mask``; channels ``c`` of the rows, mask ``cm``) and ``b`` loaded here, rounded once to
    ``out_ty`` (as ``_residual`` does) and returned in fp32, 0 where masked."""
    s = a + tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_A_BIAS:
        s += tl.load(ab_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    if HAS_B_BIAS:
        s += tl.load(bb_ptr + c, mask=cm, other=0.0).to(tl.float32)[:, None]
    return tl.where(mask, (s * res_scale).to(out_ty).to(tl.float32), 0.0)


@triton.jit
def _reference(x_ptr, add_ptr, n, c, cmask, C, P, stride_n, add_stride_n, HAS_ADD: tl.constexpr,
               CHANNELS_LAST: tl.constexpr):
    """Per channel ``c`` of sample ``n``: its first pixel's value (+ add), fp32: the shift ``K_c`` of the
    shifted sums (the same in every program, so that partial sums add up)."""
    offs = n.to(tl.int64) * stride_n + (c if CHANNELS_LAST else c * P)
    k = tl.load(x_ptr + offs, mask=cmask, other=0.0).to(tl.float32)
    if HAS_ADD:
        k += tl.load(add_ptr + n * add_stride_n + c, mask=cmask, other=0.0).to(tl.float32)
    return k


@triton.jit(do_not_specialize=["num_pb", "pix_per_prog"])
def _partial_stats(x_ptr, s1_ptr, s2_ptr, C, P, stride_n, num_pb, pix_per_prog, b_ptr, ab_ptr, bb_ptr, s_ptr,
                   res_scale, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                   JOIN: tl.constexpr = False, HAS_A_BIAS: tl.constexpr = False, HAS_B_BIAS: tl.constexpr = False):
    """Program (pb, cb, n): channels cb*BLOCK_C.. of sample n over pixels pb*pix_per_prog.. (a multiple of
    BLOCK_P): per channel the sums of ``d = x - x_c0`` (``x_c0``: the channel's first pixel; with ``add``,
    ``(x + a) - K_c`` is the same d) and of ``d*d``, accumulated elementwise in registers over the pixel
    tiles and reduced once; stored at [n, pb, c] (contiguous over c). With ``JOIN`` the statistics are
    those of the residual join ``s`` of ``x`` and ``b`` (``_joined``), which is stored at ``s_ptr``."""
    pb = tl.program_id(0)
    cb = tl.program_id(1)
    n = tl.program_id(2)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    base = n.to(tl.int64) * stride_n
    if JOIN:  # K_c: the join at the first pixel, computed from its operands (s is being written)
        ref_offs = base + (c if CHANNELS_LAST else c * P)
        a0 = tl.load(x_ptr + ref_offs, mask=cmask, other=0.0).to(tl.float32)
        k = tl.sum(_joined(a0[:, None], b_ptr, ab_ptr, bb_ptr, ref_offs[:, None], c, cmask, cmask[:, None],
                           res_scale, s_ptr.dtype.element_ty, HAS_A_BIAS, HAS_B_BIAS), axis=1)
    else:
        k = _reference(x_ptr, x_ptr, n, c, cmask, C, P, stride_n, 0, False, CHANNELS_LAST)
    acc1 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    p_begin = pb * pix_per_prog
    p_end = tl.minimum(p_begin + pix_per_prog, P)
    for start in range(p_begin, p_end, BLOCK_P):
        offs, mask, x = _group_tile(x_ptr, base, c, cmask, start, C, P, CHANNELS_LAST, BLOCK_P)
        if JOIN:
            x = _joined(x, b_ptr, ab_ptr, bb_ptr, offs, c, cmask, mask, res_scale, s_ptr.dtype.element_ty,
                        HAS_A_BIAS, HAS_B_BIAS)
            tl.store(s_ptr + offs, x.to(s_ptr.dtype.element_ty), mask=mask)
        d = tl.where(mask, x - k[:, None], 0.0)
        acc1 += d
        acc2 += d * d
    out = (n * num_pb + pb) * C + c
    tl.store(s1_ptr + out, tl.sum(acc1, axis=1), mask=cmask)
    tl.store(s2_ptr + out, tl.sum(acc2, axis=1), mask=cmask)


@triton.jit(do_not_specialize=["C", "CG", "P", "num_pb", "groups"])  # JIT variants per block sizes and flags
def _finalize(x_ptr, add_ptr, s1_ptr, s2_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, C, CG, P, stride_n, add_stride_n,
              num_pb, groups, eps, HAS_ADD: tl.constexpr, CHANNELS_LAST: tl.constexpr,
              BLOCK_CG: tl.constexpr, BLOCK_R: tl.constexpr):
    """Program (n, g): the group's CG channels x num_pb partial sums -> exact group mean ``m`` (from
    ``S1_c + P K_c``), biased variance ``sum_c S2_c - 2 (m - K_c) S1_c + P (m - K_c)^2`` over CG*P (its
    precision condition: the module docstring), then the per-channel affine fold."""
    pid = tl.program_id(0)
    n = pid // groups
    g = pid % groups
    ch = tl.arange(0, BLOCK_CG)
    cm = ch < CG
    k_ch = _reference(x_ptr, add_ptr, n, g * CG + ch, cm, C, P, stride_n, add_stride_n, HAS_ADD, CHANNELS_LAST)
    total = CG * num_pb
    r = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, total, BLOCK_R):  # partial k: pb = k // CG, channel g*CG + k % CG
        kk = start + r
        km = kk < total
        idx = (n * num_pb + kk // CG) * C + g * CG + kk % CG
        acc += tl.load(s1_ptr + idx, mask=km, other=0.0)
    count = (P * CG).to(tl.float32)
    mean = (tl.sum(acc, axis=0) + P.to(tl.float32) * tl.sum(tl.where(cm, k_ch, 0.0), axis=0)) / count
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, total, BLOCK_R):
        kk = start + r
        km = kk < total
        idx = (n * num_pb + kk // CG) * C + g * CG + kk % CG
        kc = _reference(x_ptr, add_ptr, n, g * CG + kk % CG, km, C, P, stride_n, add_stride_n, HAS_ADD,
                        CHANNELS_LAST)
        s1 = tl.load(s1_ptr + idx, mask=km, other=0.0)
        s2 = tl.load(s2_ptr + idx, mask=km, other=0.0)
        acc += tl.where(km, s2 - 2.0 * (mean - kc) * s1, 0.0)
    dm = tl.where(cm, mean - k_ch, 0.0)
    var = tl.maximum((tl.sum(acc, axis=0) + P.to(tl.float32) * tl.sum(dm * dm, axis=0)) / count, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    c = g * CG + ch
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    scale = w * rstd
    tl.store(scale_ptr + n * C + c, scale, mask=cm)
    tl.store(shift_ptr + n * C + c, b - mean * scale, mask=cm)


@triton.jit
def _apply(x_ptr, add_ptr, y_ptr, scale_ptr, shift_ptr, C, P, stride_n, add_stride_n, HAS_ADD: tl.constexpr,
           CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    n, pb, c, cmask, offs, mask, x = _load_tile(x_ptr, C, P, stride_n, CHANNELS_LAST, BLOCK_C, BLOCK_P)
    scale = tl.load(scale_ptr + n * C + c, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + n * C + c, mask=cmask, other=0.0)
    if HAS_ADD:  # (x + a) * scale + shift
        shift = shift + tl.load(add_ptr + n * add_stride_n + c, mask=cmask, other=0.0).to(tl.float32) * scale
    y = x * scale[:, None] + shift[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["C", "CG", "P", "groups"])
def _group_norm_one_pass(x_ptr, y_ptr, w_ptr, b_ptr, add_ptr, C, CG, P, stride_n, add_stride_n, groups, eps,
                         r_ptr, rab_ptr, rbb_ptr, s_ptr, res_scale,
                         HAS_ADD: tl.constexpr, CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, JOIN: tl.constexpr = False,
                         HAS_A_BIAS: tl.constexpr = False, HAS_B_BIAS: tl.constexpr = False):
    """Program (n, g): the whole group as one [BLOCK_C >= CG, BLOCK_P >= P] tile in registers: one load,
    the exact mean, the biased variance of the deviations from it, normalise + affine (+ SiLU), one
    store. With ``JOIN`` the group is that of the residual join ``s`` of ``x`` and ``r`` (``_joined``:
    biases ``rab``, ``rbb``, scale ``res_scale``), stored at ``s_ptr`` as well."""
    pid = tl.program_id(0)
    n = pid // groups
    g = pid % groups
    ch = tl.arange(0, BLOCK_C)
    cm = ch < CG
    c = g * CG + ch
    offs, mask, x = _group_tile(x_ptr, n.to(tl.int64) * stride_n, c, cm, 0, C, P, CHANNELS_LAST, BLOCK_P)
    if JOIN:
        x = _joined(x, r_ptr, rab_ptr, rbb_ptr, offs, c, cm, mask, res_scale, s_ptr.dtype.element_ty,
                    HAS_A_BIAS, HAS_B_BIAS)
        tl.store(s_ptr + offs, x.to(s_ptr.dtype.element_ty), mask=mask)
    w = tl.load(w_ptr + c, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cm, other=0.0).to(tl.float32)
    if HAS_ADD:
        x = tl.where(mask, x + tl.load(add_ptr + n * add_stride_n + c, mask=cm, other=0.0).to(tl.float32)[:, None],
                     0.0)
    count = (CG * P).to(tl.float32)
    mean = tl.sum(tl.sum(x, axis=1), axis=0) / count
    d = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(d * d, axis=1), axis=0) / count + eps)
    y = d * (w * rstd)[:, None] + b[:, None]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def one_pass_block(cg: int, P: int):
    """Register tile (BLOCK_C, BLOCK_P) of ``_group_norm_one_pass`` for groups of ``cg`` channels x ``P``
    pixels, or None (the split reduction runs instead) when ``cg`` is not a power of two or the tile
    exceeds ``ONE_PASS_MAX`` elements (see the constant)."""
    if cg & (cg - 1):
        return None
    block_c, block_p = cg, triton.next_power_of_2(P)
    return (block_c, block_p) if block_c * block_p <= ONE_PASS_MAX else None


_SM_COUNTS: dict = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 8 for other devices (the interpreter)."""
    if device.type != "cuda":
        return 8
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


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


def _blocks(C: int, P: int, channels_last: bool, tile: int | None = None):
    """Tile shape (BLOCK_C, BLOCK_P) of ~``tile`` (default TILE) elements whose contiguous axis is the
    memory-fast one."""
    tile = tile or TILE
    if channels_last:
        block_c = min(C & -C, 128)  # the largest power of two dividing C: no masked-off lanes (C = 192: 64)
        block_p = max(1, min(triton.next_power_of_2(P), tile // block_c))
    else:
        block_p = min(triton.next_power_of_2(P), tile // 4)
        block_c = max(1, min(triton.next_power_of_2(C), tile // block_p))
    return block_c, block_p


def _stats_plan(N: int, C: int, P: int, channels_last: bool, device: torch.device):
    """Launch plan of ``_partial_stats``: tile (BLOCK_C, BLOCK_P), channel blocks, pixel ranges ``num_pb``
    and pixels per program (whole tiles): about STATS_PROGRAMS_PER_SM programs per SM, each looping over
    its pixel range."""
    stats_c, stats_p = _blocks(C, P, channels_last, STATS_TILE)
    stats_cb = triton.cdiv(C, stats_c)
    want = max(1, (STATS_PROGRAMS_PER_SM * _sm_count(device)) // (stats_cb * N))
    pix_per_prog = triton.cdiv(triton.cdiv(P, min(want, triton.cdiv(P, stats_p))), stats_p) * stats_p
    return stats_c, stats_p, stats_cb, triton.cdiv(P, pix_per_prog), pix_per_prog


def _add_vector(add: torch.Tensor | None, N: int, C: int, x: torch.Tensor):
    """``add`` ([N, C] per sample, or [C] for every sample) as a contiguous tensor and its sample stride
    (C or 0); ``x`` (any valid pointer, never read) and 0 without ``add``."""
    if add is None:
        return x, 0
    if tuple(add.shape) == (N, C):
        return add.contiguous(), C
    if tuple(add.shape) == (C,):
        return add.contiguous(), 0
    raise ValueError(f"add must be [N, C] = [{N}, {C}] or [C] = [{C}], got {tuple(add.shape)}")


def group_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
               silu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
    """GroupNorm of a 4-D tensor (see the module docstring); ``silu`` applies SiLU to the result;
    ``add`` ([N, C], or [C] for every sample: e.g. the bias of the convolution that produced ``x``) is
    added per sample and channel before the statistics, in fp32."""
    if not supports(x, num_groups):
        raise ValueError(f"fused group_norm takes 4-D NCHW/NHWC float tensors with C % {num_groups} == 0; "
                         f"got shape {tuple(x.shape)}, strides {x.stride()}, {x.dtype}")
    return _group_norm(x, weight, bias, num_groups, eps, silu, add, None)[1]


def residual_group_norm(a: torch.Tensor, b: torch.Tensor, scale: float, a_bias: torch.Tensor | None,
                        b_bias: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, num_groups: int,
                        eps: float, silu: bool = False):
    """``s = residual(a, b, scale, a_bias, b_bias)`` and ``group_norm(s, weight, bias, num_groups, eps, silu)``
    in the kernels of the GroupNorm alone: the join is computed where the statistics load their input
    (the one-pass program, or ``_partial_stats``), stored once, and normalised from registers (one pass)
    or read back by ``_apply`` (split). Returns ``(s, y)``, both bitwise what the two calls give (the same
    roundings, the same fp32 statistics of the rounded ``s``)."""
    if not (residual_supports(a, b) and supports(a, num_groups)):
        raise ValueError(f"fused residual_group_norm takes two 4-D tensors of one shape, dtype and NCHW/NHWC "
                         f"layout with C % {num_groups} == 0; got {tuple(a.shape)} {a.stride()} {a.dtype} and "
                         f"{tuple(b.shape)} {b.stride()} {b.dtype}")
    _check_channel_biases(a.shape[1], a_bias, b_bias)
    return _group_norm(a, weight, bias, num_groups, eps, silu, None, (b, a_bias, b_bias, float(scale)))


def _split_statistics(x, weight, bias, num_groups, eps, add_arg, add_stride_n, has_add, r, r_a_bias, r_b_bias,
                      s, res_scale, joined):
    """``_partial_stats`` then ``_finalize`` (the split reduction's first two launches, on the current device):
    the per-(sample, channel) fp32 ``scale``, ``shift`` [N, C] of the GroupNorm of ``x`` (of the join ``s``
    with ``joined["JOIN"]``, which ``_partial_stats`` stores), ``add`` not yet folded into ``shift``."""
    N, C, H, W = x.shape
    P = H * W
    channels_last = layout_of(x) == "channels_last"
    stride_n = x.stride(0)
    cg = C // num_groups
    stats_c, stats_p, stats_cb, num_pb, pix_per_prog = _stats_plan(N, C, P, channels_last, x.device)
    s1 = torch.empty((N, num_pb, C), device=x.device, dtype=torch.float32)
    s2 = torch.empty_like(s1)
    scale = torch.empty((N, C), device=x.device, dtype=torch.float32)
    shift = torch.empty_like(scale)
    _partial_stats[(num_pb, stats_cb, N)](x, s1, s2, C, P, stride_n, num_pb, pix_per_prog,
                                          r, r_a_bias, r_b_bias, s, res_scale,
                                          CHANNELS_LAST=channels_last, BLOCK_C=stats_c, BLOCK_P=stats_p,
                                          num_warps=STATS_WARPS, **joined)
    _finalize[(N * num_groups,)](s, add_arg, s1, s2, weight, bias, scale, shift, C, cg, P, stride_n, add_stride_n,
                                 num_pb, num_groups, eps, HAS_ADD=has_add, CHANNELS_LAST=channels_last,
                                 BLOCK_CG=triton.next_power_of_2(cg),
                                 BLOCK_R=min(REDUCE_BLOCK, max(16, triton.next_power_of_2(cg * num_pb))))
    return scale, shift


def group_norm_scale_shift(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
                           add: torch.Tensor | None = None):
    """The GroupNorm of ``x + add`` (see ``group_norm``) as the per-sample, per-channel float32 affine it
    applies: ``(scale, shift)`` [N, C] with ``round(x * scale + shift)`` (then SiLU) equal to
    ``group_norm(x, ..., add=add)`` elementwise up to about one rounding (bitwise where ``group_norm`` takes the
    split reduction and the add is folded alike), computed by the split reduction's statistics launches (no output tensor; a later
    kernel, e.g. ``implicit_conv.conv3x3``'s prologue, applies it while loading ``x``). ``add`` is folded into
    ``shift`` as the apply kernel folds it (``shift + add * scale``)."""
    if not supports(x, num_groups):
        raise ValueError(f"fused group_norm_scale_shift takes 4-D NCHW/NHWC float tensors with C % {num_groups} "
                         f"== 0; got shape {tuple(x.shape)}, strides {x.stride()}, {x.dtype}")
    N, C = x.shape[:2]
    add_arg, add_stride_n = _add_vector(add, N, C, x)
    joined = dict(JOIN=False, HAS_A_BIAS=False, HAS_B_BIAS=False)
    if x.numel() == 0:
        z = torch.zeros((N, C), device=x.device, dtype=torch.float32)
        return z, z.clone()
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        scale, shift = _split_statistics(x, weight, bias, num_groups, eps, add_arg, add_stride_n, add is not None,
                                         x, x, x, x, 1.0, joined)
    if add is not None:
        shift = shift + (add.float().view(1, C) if add.dim() == 1 else add.float()) * scale
    return scale, shift


def _group_norm(x, weight, bias, num_groups, eps, silu, add, join):
    """Launches for ``group_norm`` (``join`` None: returns ``(x, y)``) and ``residual_group_norm`` (``join =
    (b, a_bias, b_bias, scale)``: returns ``(s, y)``), inputs already checked."""
    N, C, H, W = x.shape
    add_arg, add_stride_n = _add_vector(add, N, C, x)
    has_add = add is not None
    P = H * W
    channels_last = layout_of(x) == "channels_last"
    y = torch.empty_like(x)  # keeps the memory format
    r, a_bias, b_bias, res_scale = join or (x, None, None, 1.0)
    s = x if join is None else torch.empty_like(x)
    r_a_bias = x if a_bias is None else a_bias.contiguous()  # x: any valid pointer, never read
    r_b_bias = x if b_bias is None else b_bias.contiguous()
    joined = dict(JOIN=join is not None, HAS_A_BIAS=a_bias is not None, HAS_B_BIAS=b_bias is not None)
    if x.numel() == 0:
        return s, y
    stride_n = x.stride(0)
    cg = C // num_groups
    # Triton launches on the current GPU and its current stream: make that x's GPU (e.g. cuda:1)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        tile = one_pass_block(cg, P)
        if tile is not None:
            _group_norm_one_pass[(N * num_groups,)](
                x, y, weight, bias, add_arg, C, cg, P, stride_n, add_stride_n, num_groups, eps,
                r, r_a_bias, r_b_bias, s, res_scale, HAS_ADD=has_add,
                CHANNELS_LAST=channels_last, SILU=bool(silu), BLOCK_C=tile[0], BLOCK_P=tile[1],
                num_warps=max(4, min(16, tile[0] * tile[1] // 1024)), **joined)
            return s, y
        scale, shift = _split_statistics(x, weight, bias, num_groups, eps, add_arg, add_stride_n, has_add,
                                         r, r_a_bias, r_b_bias, s, res_scale, joined)
        # from here on the input is s (x itself without a join)
        block_c, block_p = _blocks(C, P, channels_last)
        grid = (triton.cdiv(P, block_p), triton.cdiv(C, block_c), N)
        _apply[grid](s, add_arg, y, scale, shift, C, P, stride_n, add_stride_n, HAS_ADD=has_add,
                     CHANNELS_LAST=channels_last, SILU=bool(silu), BLOCK_C=block_c, BLOCK_P=block_p)
    return s, y


# ------------------------------------------------------------------------------------------- residual
RESIDUAL_BLOCK = 2048  # elements per program


@triton.jit
def _residual(a_ptr, b_ptr, a_bias_ptr, b_bias_ptr, y_ptr, numel, C, P, scale,
              HAS_A_BIAS: tl.constexpr, HAS_B_BIAS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
              BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    y = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32) + tl.load(b_ptr + offs, mask=mask,
                                                                               other=0.0).to(tl.float32)
    if HAS_A_BIAS or HAS_B_BIAS:
        c = offs % C if CHANNELS_LAST else (offs // P) % C
        if HAS_A_BIAS:
            y += tl.load(a_bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
        if HAS_B_BIAS:
            y += tl.load(b_bias_ptr + c, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (y * scale).to(y_ptr.dtype.element_ty), mask=mask)


def _check_channel_biases(C: int, a_bias: torch.Tensor | None, b_bias: torch.Tensor | None) -> None:
    """The residual join's optional per-channel biases must be [C]."""
    for name, v in (("a_bias", a_bias), ("b_bias", b_bias)):
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"{name} must be [C] = [{C}], got {tuple(v.shape)}")


def residual_supports(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``residual`` takes ``a`` and ``b``: 4-D, the same shape, dtype and memory layout (NCHW or
    NHWC, dense), a float dtype, < 2**31 elements."""
    return (layout_of(a) is not None and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            and a.device == b.device and a.numel() < 2 ** 31
            and a.dtype in (torch.float16, torch.bfloat16, torch.float32))


def residual(a: torch.Tensor, b: torch.Tensor, scale: float, a_bias: torch.Tensor | None = None,
             b_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``((a + a_bias) + (b + b_bias)) * scale`` for 4-D ``a``, ``b`` ([N, C, H, W], one layout) and optional
    per-channel biases [C]: one kernel instead of the convolutions' separate bias adds, the residual add
    and the scaling. float32 arithmetic, one rounding to ``a.dtype`` (torch's fp16 path rounds after every
    op); the output has ``a``'s layout."""
    if not residual_supports(a, b):
        raise ValueError(f"fused residual takes two 4-D tensors of one shape, dtype and NCHW/NHWC layout; got "
                         f"{tuple(a.shape)} {a.stride()} {a.dtype} and {tuple(b.shape)} {b.stride()} {b.dtype}")
    N, C, H, W = a.shape
    _check_channel_biases(C, a_bias, b_bias)
    y = torch.empty_like(a)
    numel = a.numel()
    if numel == 0:
        return y
    with torch.cuda.device(a.device) if a.is_cuda else contextlib.nullcontext():
        _residual[(triton.cdiv(numel, RESIDUAL_BLOCK),)](
            a, b, a if a_bias is None else a_bias.contiguous(), a if b_bias is None else b_bias.contiguous(), y,
            numel, C, H * W, float(scale), HAS_A_BIAS=a_bias is not None, HAS_B_BIAS=b_bias is not None,
            CHANNELS_LAST=layout_of(a) == "channels_last", BLOCK=RESIDUAL_BLOCK)
    return y


# ------------------------------------------------------------------------------------------- sub-pixel upsampling
UPSAMPLE_TILE = 4096  # elements (pixels x channels) per program of _phase_upsample_cat


@triton.jit
def _phase_upsample_cat(z_ptr, bias_ptr, s_ptr, y_ptr, num_pix, H2, W2, O, CS,
                        HAS_SKIP: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program (pixel block, channel block) of ``y`` (NHWC [N, 2H, 2W, O + CS]): channel c < O of pixel
    (2i+a, 2j+b) is phase 2a+b of ``z`` (NHWC [N, H+1, W+1, 4*O]) at (i+a, j+b) plus ``bias[c]``; channel
    c >= O is channel c - O of ``skip`` (NHWC [N, 2H, 2W, CS])."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = pix < num_pix
    ct = O + CS
    xx = pix % W2
    yy = (pix // W2) % H2
    n = pix // (W2 * H2)
    a = yy % 2
    b = xx % 2
    zrow = (n * (H2 // 2 + 1) + yy // 2 + a) * (W2 // 2 + 1) + xx // 2 + b
    zoff = zrow.to(tl.int64) * (4 * O) + (2 * a + b) * O
    up = c < O
    val = tl.load(z_ptr + zoff[:, None] + c[None, :], mask=pm[:, None] & up[None, :], other=0.0).to(tl.float32)
    val += tl.load(bias_ptr + c, mask=up, other=0.0).to(tl.float32)[None, :]
    if HAS_SKIP:
        sm = pm[:, None] & (~up & (c < ct))[None, :]
        sk = tl.load(s_ptr + pix.to(tl.int64)[:, None] * CS + (c - O)[None, :], mask=sm, other=0.0)
        val = tl.where(up[None, :], val, sk.to(tl.float32))
    tl.store(y_ptr + pix.to(tl.int64)[:, None] * ct + c[None, :], val.to(y_ptr.dtype.element_ty),
             mask=pm[:, None] & (c < ct)[None, :])


def phase_upsample_supports(z: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor | None) -> bool:
    """Whether ``phase_upsample`` takes these: ``z`` a 4-D channels-last [N, 4*O, H+1, W+1] float tensor,
    ``bias`` [O], ``skip`` (optional) channels-last [N, CS, 2H, 2W] of ``z``'s dtype and device."""
    if layout_of(z) != "channels_last" or z.shape[1] % 4 or z.shape[2] < 2 or z.shape[3] < 2:
        return False
    if z.dtype not in (torch.float16, torch.bfloat16, torch.float32) or z.numel() >= 2 ** 31:
        return False
    n, o4, h1, w1 = z.shape
    if bias is None or tuple(bias.shape) != (o4 // 4,):
        return False
    if skip is None:
        return True
    return (layout_of(skip) == "channels_last" and skip.dtype == z.dtype and skip.device == z.device
            and (skip.shape[0], skip.shape[2], skip.shape[3]) == (n, 2 * (h1 - 1), 2 * (w1 - 1))
            and skip.numel() < 2 ** 31)


def phase_upsample(z: torch.Tensor, bias: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
    """The output of ``conv3x3(upsample_nearest_2x(x)) + bias`` from its sub-pixel form ``z`` (the four
    2x2 phase convolutions of ``x`` as one convolution with padding 1, ``lgm_core.models.unet.
    phase_kernels``), concatenated along channels with ``skip`` when given: ``cat([up, skip], 1)``,
    channels-last [N, O + CS, 2H, 2W], in one kernel (float32 add, one rounding to ``z.dtype``)."""
    if not phase_upsample_supports(z, bias, skip):
        raise ValueError(f"phase_upsample takes a channels-last [N, 4*O, H+1, W+1] z, a [O] bias and an optional "
                         f"channels-last [N, CS, 2H, 2W] skip; got z {tuple(z.shape)} {z.stride()}, bias "
                         f"{None if bias is None else tuple(bias.shape)}, skip "
                         f"{None if skip is None else (tuple(skip.shape), skip.stride())}")
    n, o4, h1, w1 = z.shape
    o, h2, w2 = o4 // 4, 2 * (h1 - 1), 2 * (w1 - 1)
    cs = 0 if skip is None else skip.shape[1]
    y = torch.empty((n, o + cs, h2, w2), device=z.device, dtype=z.dtype, memory_format=torch.channels_last)
    num_pix = n * h2 * w2
    if num_pix == 0:
        return y
    block_c = min(triton.next_power_of_2(o + cs), 128)
    block_p = max(1, UPSAMPLE_TILE // block_c)
    with torch.cuda.device(z.device) if z.is_cuda else contextlib.nullcontext():
        _phase_upsample_cat[(triton.cdiv(num_pix, block_p), triton.cdiv(o + cs, block_c))](
            z, bias.contiguous(), z if skip is None else skip, y, num_pix, h2, w2, o, cs, HAS_SKIP=skip is not None,
            BLOCK_P=block_p, BLOCK_C=block_c)
    return y


# ------------------------------------------------------------------------------------------- LayerNorm
LAYER_NORM_TILE = 4096  # elements (rows x padded columns) per program


@triton.jit
def _layer_norm(x_ptr, r_ptr, s_ptr, w_ptr, b_ptr, y_ptr, rows, D, eps, HAS_RESIDUAL: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows row0.. of a [rows, D] matrix: ``s = x (+ r)`` rounded to the dtype (stored when HAS_RESIDUAL),
    then LayerNorm of s over D in fp32 (exact two-pass mean / biased variance in registers)."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_D)
    cm = col < D
    mask = (row < rows)[:, None] & cm[None, :]
    offs = row[:, None] * D + col[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x = (x.to(tl.float32) + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)).to(s_ptr.dtype.element_ty)
        tl.store(s_ptr + offs, x, mask=mask)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / D
    d = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / D + eps)
    w = tl.load(w_ptr + col, mask=cm, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + col, mask=cm, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


def layer_norm_supports(x: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """Whether ``layer_norm`` takes ``x`` (and ``residual``): contiguous, a float dtype, the last axis
    at most LAYER_NORM_TILE wide, < 2**31 elements; ``residual`` of the same shape, dtype and device."""
    ok = (x.dim() >= 1 and x.is_contiguous() and 0 < x.shape[-1] <= LAYER_NORM_TILE and x.numel() < 2 ** 31
          and x.dtype in (torch.float16, torch.bfloat16, torch.float32))
    if residual is not None:
        ok = ok and residual.shape == x.shape and residual.dtype == x.dtype and residual.is_contiguous() and \
            residual.device == x.device
    return ok


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
               residual: torch.Tensor | None = None):
    """LayerNorm over the last axis of a contiguous ``x`` (fp32 statistics, one rounding), equal to
    ``F.layer_norm`` up to that rounding. With ``residual``: returns ``(s, layer_norm(s))`` where
    ``s = x + residual`` rounded to the dtype as torch's add would (the transformer's residual stream),
    in one pass over the data."""
    if not layer_norm_supports(x, residual):
        raise ValueError(f"fused layer_norm takes a contiguous float tensor (last axis <= {LAYER_NORM_TILE}) and an "
                         f"equal residual; got {tuple(x.shape)} {x.dtype} contiguous={x.is_contiguous()}"
                         + ("" if residual is None else f" and {tuple(residual.shape)} {residual.dtype}"))
    D = x.shape[-1]
    if weight.numel() != D or bias.numel() != D:
        raise ValueError(f"layer_norm weight and bias must have {D} elements (the last axis), got "
                         f"{weight.numel()} and {bias.numel()}")
    rows = x.numel() // D
    y = torch.empty_like(x)
    s = torch.empty_like(x) if residual is not None else y
    if rows:
        block_d = triton.next_power_of_2(D)
        block_r = max(1, LAYER_NORM_TILE // block_d)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _layer_norm[(triton.cdiv(rows, block_r),)](
                x, x if residual is None else residual, s, weight, bias, y, rows, D, float(eps),
                HAS_RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_D=block_d)
    return y if residual is None else (s, y)


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


# elements per program of _geglu_tiles (0: the row kernel _geglu). H200, the batch-16 MVDream step's GEGLUs
# alone (benchmarks/results/probe_mv_ops_h200.md): 320 channels 0.447 -> 0.326 ms, 640: 0.208 -> 0.190,
# 1280: 0.117 -> 0.120 (the row kernel's second column block of a 1280-wide row is three-quarters masked)
GEGLU_TILE = 4096
GEGLU_WARPS = 4


@triton.jit
def _geglu_tiles(h_ptr, y_ptr, rows, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """GEGLU over [BLOCK_R rows x BLOCK_D columns] tiles; BLOCK_D divides D (no column mask)."""
    r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    c = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m = (r < rows)[:, None]
    src = h_ptr + r[:, None] * (2 * D) + c[None, :]
    value = tl.load(src, mask=m, other=0.0).to(tl.float32)
    gate = tl.load(src + D, mask=m, other=0.0).to(tl.float32)
    y = value * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
    tl.store(y_ptr + r[:, None] * D + c[None, :], y.to(y_ptr.dtype.element_ty), mask=m)


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
    block_d = min(D & -D, 1024)  # the largest power of two dividing D
    with torch.cuda.device(h.device) if h.is_cuda else contextlib.nullcontext():
        if GEGLU_TILE and block_d >= 64:
            block_r = max(1, GEGLU_TILE // block_d)
            block_r = 1 << (block_r.bit_length() - 1)  # a power of two (tl.arange), for any GEGLU_TILE
            _geglu_tiles[(triton.cdiv(rows, block_r), D // block_d)](h, y, rows, D, BLOCK_R=block_r, BLOCK_D=block_d,
                                                                      num_warps=GEGLU_WARPS)
        else:
            _geglu[(rows, triton.cdiv(D, GEGLU_BLOCK))](h, y, D, BLOCK=GEGLU_BLOCK)
    return y
