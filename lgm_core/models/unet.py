"""LGM's asymmetric multi-view U-Net (docs/conventions.md#model), checkpoint-compatible module by module.

Tensor layout: ``[B*4, C, H, W]`` with the 4 views of one object consecutive along the first axis.
Attention blocks attend jointly over all 4 views of an object.

Precision: GroupNorm always runs in float32 (input upcast, output cast back; in fp16/bf16 CUDA
inference as the fused Triton kernels of ``fused_norm.py``, see ``use_fused_groupnorm``), attention uses
``scaled_dot_product_attention`` (fp32 accumulation inside the kernels) or, in ``"math"`` mode, an
explicit softmax computed in float32 — the reference path used for checking.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import building_cuda_graph, capturing_cuda_graph
from .derived import derived_weight

SKIP_SCALE = math.sqrt(0.5)
NUM_HEADS = 16
NUM_VIEWS = 4
ATTENTION_BACKENDS = ("sdpa", "math")

# The fused Triton GroupNorm(+SiLU) of fused_norm.py: on by default, off with LGM_FUSED_NORM=0 (read
# once, at import) or by setting this switch to False at any time (the original-equivalent benchmark
# rows do, to run torch's own kernels as the original).
FUSED_GROUPNORM = os.environ.get("LGM_FUSED_NORM", "1").strip() != "0"
# The residual kernel, the folding of convolution biases into it and into GroupNorm's ``add``, and the fused
# LayerNorm(+residual) of the diffusion transformers (``fold_biases``, ``residual``, ``layer_norm``): on with the fused
# GroupNorm; benchmarks switch it off to measure what it buys.
FOLD_BIASES = True
# Convolutions reformulated on the fused path (``fold_biases``, channels-last), the same sums up to fp16
# rounding (docs/benchmarks.md, benchmarks/probe_convs.py):
# - PHASE_UPSAMPLE: an up block's nearest-2x upsampling + 3x3 convolution as its sub-pixel form, four 2x2
#   convolutions of the low-resolution input run as one (16/36 of the multiply-adds, no upsampled copy),
#   whose interleave, bias and the next block's concatenation with the skip are one kernel;
# - PAD_INPUT_CHANNELS: conv_in's input channels (9) zero-padded to this many (cuDNN runs a 9-channel
#   input on a slow non-tensor-core kernel); 0 = off.
# - TAP_CONV_MAX_PIXELS: a ResnetBlock's 3x3 convolution of an image of at most this many pixels (batch x H x W)
#   as one cuBLAS GEMM over its nine taps and one Triton kernel summing the shifted products in fp16
#   (tap_conv.py; cuDNN fills few SMs there); 0 = off, the default. H200, fp16 (benchmarks/results/
#   probe_convs_taps_h200.md): 4x1024x8x8 -> 1024 22.8 -> 14.5 us, 4x2048x8x8 37.8 -> 21.1 us,
#   4x2048x16x16 75.5 -> 65.0 us; in LGM big at 1024 (probe_lgm_fusion_taps_h200.md, 5 rounds): kernel time
#   -0.16 ms, but b1 6.04 -> 5.98 ms and b4 17.85 -> 17.81 ms (the round-to-round spread) while the max error
#   against fp32 rose 0.036 -> 0.044 (fp16 products; float32 products are slower than cuDNN above 256 pixels).
# - IMPLICIT_CONV: a 3x3 convolution (stride 1) of a shape listed in ``implicit_conv.CHOICES`` (measured faster
#   than cuDNN there, H200) as the Triton implicit-GEMM kernel of implicit_conv.py; conv_in's 9 channels are then
#   read unpadded (the kernel masks them; no padded copy; PAD_INPUT_CHANNELS serves the shapes not listed).
#   False: cuDNN everywhere. H200, LGM big fp16, 5 rounds (benchmarks/results/probe_lgm_fusion_implicit_h200.md):
#   b1 6.005 -> 5.837 ms, b4 17.915 -> 17.687 ms, max error vs fp32 0.0355 -> 0.0377.
PHASE_UPSAMPLE = True
PAD_INPUT_CHANNELS = 16
TAP_CONV_MAX_PIXELS = 0
IMPLICIT_CONV = True
# On the fused path a ResnetBlock's or attention block's residual join is handed on as a ``PendingResidual``
# and computed inside the next GroupNorm's kernels (``fused_norm.residual_group_norm``), bitwise the same
# result without the residual kernel's launch and one read of the joined tensor; False: the residual kernel.
# Off by default: H200, LGM big fp16 + CUDA graphs, 5 interleaved rounds (benchmarks/results/
# probe_lgm_fusion_join_h200.md): b1 6.62 -> 7.06 ms median (faster in 3 of 5 rounds, within the machine's
# +-0.5 ms round-to-round spread), b4 18.70 -> 18.83 ms; kernel time 5.51 -> 5.49 ms. No measurable gain.
JOIN_RESIDUAL_INTO_NORM = False
FUSED_DEVICE_TYPES = ("cuda",)  # where the fused kernels run (tests add "cpu" with TRITON_INTERPRET=1)
_fused_module = None  # fused_norm once imported, False when Triton is not importable


def _autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)`` (torch >= 2.4), with the older per-device calls."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _compiling() -> bool:
    """Whether a torch.compile (Dynamo) trace is running (``torch.compiler.is_compiling``, torch >= 2.3)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if is_compiling is None:
        from torch import _dynamo

        is_compiling = _dynamo.is_compiling
    return is_compiling()


def _fused_norm():
    """lgm_core.models.fused_norm, imported on first use (it imports Triton), or None without Triton."""
    global _fused_module
    if _fused_module is None:
        try:
            from lgm_core.models import fused_norm
            _fused_module = fused_norm
        except ImportError:
            _fused_module = False
    return _fused_module or None


_optional_modules: dict = {}  # name -> module, or False when it cannot be imported (no Triton)


def _optional_kernels(name: str):
    """``lgm_core.models.<name>`` (a module of Triton kernels) imported on first use, or None without Triton."""
    if name not in _optional_modules:
        try:
            _optional_modules[name] = importlib.import_module(f"lgm_core.models.{name}")
        except ImportError:
            _optional_modules[name] = False
    return _optional_modules[name] or None


def _tap_conv():
    """lgm_core.models.tap_conv (imports Triton), or None without Triton."""
    return _optional_kernels("tap_conv")


def _implicit_conv():
    """lgm_core.models.implicit_conv (imports Triton), or None without Triton."""
    return _optional_kernels("implicit_conv")


def _stream_ordered_allocator(device_type: str) -> bool:
    """Whether CUDA memory comes from ``cudaMallocAsync`` (ComfyUI's default on CUDA, or
    ``PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync``). Triton's launcher cannot check pointers into
    that allocator's pool while a CUDA graph is being captured (measured on the H200 inside ComfyUI
    0.33: "Pointer argument cannot be accessed from Triton", then an abort freeing the failed
    capture), so the fused kernels are not used with it."""
    if device_type != "cuda":
        return False
    try:
        return torch.cuda.get_allocator_backend() == "cudaMallocAsync"
    except Exception:  # noqa: BLE001  (no CUDA runtime initialised: nothing to decide yet)
        return False


def fused_groupnorm_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether fp16/bf16 inference of a model on ``device`` gets the fused Triton GroupNorm: the switch
    is on, ``device`` is a fused device type, Triton imports and the allocator is not stream-ordered."""
    device = torch.device(device)
    return (FUSED_GROUPNORM and device.type in FUSED_DEVICE_TYPES and dtype in (torch.float16, torch.bfloat16)
            and not _stream_ordered_allocator(device.type) and _fused_norm() is not None)


def fused_kernels_apply(x: torch.Tensor) -> bool:
    """The conditions every fused Triton kernel of fused_norm.py shares: the switch is on, a CUDA graph is
    being built (``runtime.building_cuda_graph``: replayed from a graph the kernels' launch cost vanishes;
    launched eagerly, Triton's launcher makes them slower than torch's kernels — H200, eager MVDream UNet
    step 31.7 ms fused vs 18.9 ms), ``x`` is an fp16/bf16 tensor on CUDA, autograd is off (inference),
    autocast is off (training's evaluation keeps autocast's fp32 ops), no torch.compile trace is running
    (Inductor fuses these ops itself), the CUDA allocator is not ``cudaMallocAsync`` and Triton imports."""
    return (FUSED_GROUPNORM and building_cuda_graph() and not _compiling()
            and x.device.type in FUSED_DEVICE_TYPES
            and x.dtype in (torch.float16, torch.bfloat16) and not torch.is_grad_enabled()
            and not _autocast_enabled(x.device.type) and not _stream_ordered_allocator(x.device.type)
            and _fused_norm() is not None)


def use_fused_groupnorm(x: torch.Tensor, num_groups: int = 32) -> bool:
    """Whether GroupNorm32 sends ``x`` to the fused Triton kernels: ``fused_kernels_apply`` and ``x`` is
    a 4-D NCHW/NHWC tensor whose channels divide into the groups. Otherwise torch's kernels run."""
    return fused_kernels_apply(x) and _fused_norm().supports(x, num_groups)


def _fused_failed(err: Exception) -> None:
    """The fused kernels could not build or launch (e.g. Triton finds no C compiler for its launcher,
    no writable cache folder): torch's kernels from now on, with one log line."""
    global FUSED_GROUPNORM
    FUSED_GROUPNORM = False
    import logging

    logging.getLogger("lgm_core").warning(
        "fused Triton kernels (GroupNorm, residual, LayerNorm, GEGLU, sub-pixel upsampling, 3x3 convolutions) "
        "unavailable (%s: %s); "
        "using torch's "
        "kernels (LGM_FUSED_NORM=0 "
        "skips this attempt)", type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")


def _try_fused(call):
    """``call()`` of a fused kernel, or None when Triton cannot build or launch it (the kernels are then
    switched off, ``_fused_failed``); during a capture the error propagates: the graph runner retries
    eagerly, which lands here again."""
    try:
        return call()
    except Exception as err:  # noqa: BLE001  (Triton build/launch failure: torch's kernels instead)
        if capturing_cuda_graph():
            raise
        _fused_failed(err)
        return None


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` of ``h = [..., value ‖ gate]`` (exact erf GELU): the fused Triton kernel
    under ``fused_kernels_apply`` for a contiguous ``h``, else torch's ops (same result up to one
    rounding)."""
    if fused_kernels_apply(h) and _fused_norm().geglu_supports(h):
        y = _try_fused(lambda: _fused_norm().geglu(h))
        if y is not None:
            return y
    value, gate = h.chunk(2, dim=-1)
    return value * F.gelu(gate)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool = False, add: torch.Tensor | None = None,
               torch_norm=None) -> torch.Tensor:
    """``norm`` (any affine ``nn.GroupNorm``) of ``x + add`` (``add`` [N, C] per sample or [C] for every
    sample, broadcast over the pixels), then SiLU when ``silu``: the fused Triton kernels when
    ``use_fused_groupnorm`` holds (and Triton works), else torch's ops with ``torch_norm`` (default
    ``norm`` itself) as the normalisation."""
    if norm.affine and use_fused_groupnorm(x, norm.num_groups):
        y = _try_fused(lambda: _fused_norm().group_norm(x, norm.weight, norm.bias, norm.num_groups, norm.eps,
                                                        silu=silu, add=add))
        if y is not None:
            return y
    if add is not None:
        add = add.to(x.dtype)
        x = x + (add.view(1, -1, 1, 1) if add.dim() == 1 else add[:, :, None, None])
    y = (torch_norm or norm)(x)
    return F.silu(y) if silu else y


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups, eps 1e-5 unless given) whose statistics and normalisation are computed in
    float32 (LGM's UNet and the multi-view diffusion UNet, ``lgm_core.mvdiffusion.unet``).

    For fp16/bf16 inputs on CUDA the native kernel already accumulates in float32 and rounds
    only its output (what autocast's fp32 GroupNorm followed by the next fp16 conv gives too), so
    it is used directly (``native_half_on_cuda``); elsewhere the input is upcast explicitly.

    ``silu=True`` returns ``F.silu(norm(x))``. In fp16/bf16 CUDA inference captured in a CUDA graph
    (``use_fused_groupnorm``) both run as fused Triton kernels (fused_norm.py: fp32 statistics and affine, SiLU before the one
    rounding to the input dtype); everywhere else the result is exactly torch's GroupNorm then SiLU.
    """

    native_half_on_cuda = True

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(32, channels, eps=eps, affine=True)

    def forward(self, x: torch.Tensor, silu: bool = False, add: torch.Tensor | None = None) -> torch.Tensor:
        """``norm(x)`` (``silu``: then SiLU); ``add`` ([N, C] per sample, e.g. the diffusion ResBlock's
        timestep embedding, or [C] for every sample, e.g. the bias of the convolution that made ``x``)
        normalises ``x + add`` broadcast over the pixels instead (fused into the kernel on the fast path)."""
        return group_norm(self, x, silu, add, torch_norm=self._group_norm)

    def _group_norm(self, x: torch.Tensor) -> torch.Tensor:
        if (not x.is_cuda and torch.is_grad_enabled() and not x.requires_grad and self.weight.requires_grad
                and not x.is_contiguous()):
            # torch's CPU group_norm backward crashes (segfault, seen with torch 2.13) for a
            # channels-last input that needs no gradient while the affine weights do (fine-tuning with
            # frozen earlier layers). Only reachable in training; inference is unaffected.
            x = x.contiguous()
        if x.dtype == torch.float32 or (x.is_cuda and self.native_half_on_cuda):
            return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def fused_joins_apply(x: torch.Tensor) -> bool:
    """``FOLD_BIASES`` and ``fused_kernels_apply(x)``: the condition of the residual and LayerNorm kernels
    and of the bias folding."""
    return FOLD_BIASES and fused_kernels_apply(x)


def residual(a: torch.Tensor, b: torch.Tensor, scale: float, a_bias: torch.Tensor | None = None,
             b_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``((a + a_bias) + (b + b_bias)) * scale`` (biases [C] per channel, optional): the fused Triton kernel
    of fused_norm.py under ``fused_kernels_apply`` when ``a`` and ``b`` share one NCHW/NHWC layout, else
    torch's ops (same result up to fp16 roundings: torch rounds after every op, the kernel once)."""
    if fused_joins_apply(a) and _fused_norm().residual_supports(a, b):
        y = _try_fused(lambda: _fused_norm().residual(a, b, scale, a_bias, b_bias))
        if y is not None:
            return y
    if a_bias is not None:
        a = a + a_bias.view(1, -1, 1, 1)
    if b_bias is not None:
        b = b + b_bias.view(1, -1, 1, 1)
    return (a + b) * scale


@dataclass
class PendingResidual:
    """A residual join ``((a + a_bias) + (b + b_bias)) * scale`` handed on before it is computed (``FOLD_BIASES``
    path): when the next module starts with a GroupNorm (a ResnetBlock, an attention block, the final norm)
    and ``JOIN_RESIDUAL_INTO_NORM`` is on, the join runs inside that GroupNorm's kernels (``norm_of_joined``);
    otherwise the next module takes ``materialize()`` (the residual kernel, where it ran before).
    The computed join is kept, so the object can stand in a U-Net's skip list like a tensor."""

    a: torch.Tensor | None
    b: torch.Tensor | None
    scale: float
    a_bias: torch.Tensor | None = None
    b_bias: torch.Tensor | None = None
    value: torch.Tensor | None = None

    def like(self) -> torch.Tensor:
        """A tensor of the join's shape, dtype, device and layout (for dispatch decisions)."""
        return self.a if self.value is None else self.value

    def computed(self, value: torch.Tensor) -> torch.Tensor:
        """Record the join's ``value`` and drop the operands (a skip connection holding this object would
        otherwise keep them alive until the up block that reads it)."""
        self.value, self.a, self.b, self.a_bias, self.b_bias = value, None, None, None, None
        return value

    def materialize(self) -> torch.Tensor:
        """The joined tensor (computed by ``residual`` on first use)."""
        if self.value is None:
            self.computed(residual(self.a, self.b, self.scale, self.a_bias, self.b_bias))
        return self.value


def materialize(x):
    """``x`` as a tensor: a ``PendingResidual`` or ``PhaseUpsampled`` is computed, a tensor passes."""
    return x.materialize() if isinstance(x, (PendingResidual, PhaseUpsampled)) else x


def norm_of_joined(norm: nn.GroupNorm, x, silu: bool = False):
    """``(t, norm(t))`` (``silu``: then SiLU) for ``t = materialize(x)``: a ``PendingResidual`` not yet computed
    is joined inside the GroupNorm's kernels (``fused_norm.residual_group_norm``: the join is stored once and
    not read back for the statistics) when they apply, with the result bitwise that of the two kernels."""
    if (JOIN_RESIDUAL_INTO_NORM and isinstance(x, PendingResidual) and x.value is None and norm.affine
            and use_fused_groupnorm(x.a, norm.num_groups) and _fused_norm().residual_supports(x.a, x.b)):
        out = _try_fused(lambda: _fused_norm().residual_group_norm(
            x.a, x.b, x.scale, x.a_bias, x.b_bias, norm.weight, norm.bias, norm.num_groups, norm.eps, silu=silu))
        if out is not None:
            x.computed(out[0])
            return out
    t = materialize(x)
    return t, norm(t, silu=silu)


def layer_norm(norm: nn.LayerNorm, x: torch.Tensor, residual: torch.Tensor | None = None):
    """``norm(x)``, or with ``residual`` ``(s, norm(s))`` for ``s = x + residual`` (a transformer's residual
    stream and the next block's normalised input): one fused Triton kernel under ``fused_kernels_apply``
    for contiguous inputs (torch's LayerNorm kernel reaches ~1/4 of the memory bandwidth on rows of
    320-1280 channels), else torch's ops (identical to writing them out)."""
    if (fused_joins_apply(x) and norm.elementwise_affine and norm.bias is not None
            and len(norm.normalized_shape) == 1 and norm.normalized_shape[0] == x.shape[-1]
            and _fused_norm().layer_norm_supports(x, residual)):
        out = _try_fused(lambda: _fused_norm().layer_norm(x, norm.weight, norm.bias, norm.eps, residual))
        if out is not None:
            return out
    if residual is None:
        return norm(x)
    s = x + residual
    return s, norm(s)


def fold_biases(x: torch.Tensor) -> bool:
    """Whether LGM's blocks run their convolutions without bias and hand the biases to the next fused
    kernel (GroupNorm's ``add``, ``residual``): on the fused path, for a 4-D NCHW/NHWC ``x``. Saves one
    broadcast bias-add kernel per convolution (cuDNN adds the bias separately: 89 of them, ~0.95 ms of
    LGM big's 8 ms at batch 1 on the H200)."""
    return fused_joins_apply(x) and _fused_norm().layout_of(x) is not None


def conv_without_bias(conv: nn.Conv2d, x: torch.Tensor, taps: bool = False) -> torch.Tensor:
    """``conv(x)`` minus its bias (the caller adds ``conv.bias`` in a later fused kernel). Calls the
    convolution directly, not ``conv.forward``: module hooks do not run (the pack's UNets register none).
    ``taps``: a 3x3 convolution of a small image may run in tap form (``tap_conv_applies``)."""
    y = implicit_conv_or_none(conv, x)
    if y is not None:
        return y
    if taps and tap_conv_applies(conv, x):
        tc = _tap_conv()
        weight = derived_weight(conv, "_tap_weight", (conv.weight,), tc.tap_weight)
        y = _try_fused(lambda: tc.tap_conv3x3(x, weight, fp32_products=False))
        if y is not None:
            return y
    return conv._conv_forward(x, conv.weight, None)


def _plain_3x3_on_fused_path(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """A plain 3x3 convolution (stride 1, padding 1, zeros, no dilation or groups) with weights of ``x``'s dtype,
    of a 4-D channels-last ``x`` on the fused path (``fused_kernels_apply``): what the Triton convolution forms
    (tap form, implicit GEMM) take."""
    return (x.dim() == 4 and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.weight.dtype == x.dtype and channels_last(x)
            and fused_kernels_apply(x))


def implicit_conv_config(conv: nn.Conv2d, x: torch.Tensor):
    """The ``implicit_conv`` tile for ``conv(x)``, or None (cuDNN runs it): ``IMPLICIT_CONV`` on, a plain 3x3
    convolution on the fused path (``_plain_3x3_on_fused_path``) whose shape ``implicit_conv.choose`` lists as
    measured faster."""
    if not IMPLICIT_CONV or not _plain_3x3_on_fused_path(conv, x):
        return None
    ic = _implicit_conv()
    if ic is None:
        return None
    n, c, h, w = x.shape
    return ic.choose(c, conv.out_channels, n, h, w, x.device, x.dtype)


def implicit_conv_or_none(conv: nn.Conv2d, x: torch.Tensor, bias: torch.Tensor | None = None):
    """``conv(x)`` with ``bias`` (default none: the caller folds ``conv.bias`` into a later kernel) as the
    implicit-GEMM kernel where ``implicit_conv_config`` gives a tile, else None (also when the kernel fails:
    the caller then runs cuDNN)."""
    cfg = implicit_conv_config(conv, x)
    if cfg is None:
        return None
    ic = _implicit_conv()
    taps = derived_weight(conv, "_implicit_taps", (conv.weight,), ic.tap_weights)
    if not ic.supports(x, taps, config=cfg):
        return None
    return _try_fused(lambda: ic.conv3x3(x, taps, bias, out_channels=conv.out_channels, config=cfg))


def tap_conv_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` runs as ``tap_conv.tap_conv3x3`` (one GEMM over the nine taps, one kernel summing
    the shifted products, products in ``x.dtype``): on the fused path (``fused_kernels_apply``), a plain
    3x3 convolution (stride 1, padding 1, zeros, no dilation or groups) of a channels-last ``x`` of at most
    ``TAP_CONV_MAX_PIXELS`` pixels, weights of ``x``'s dtype."""
    if not TAP_CONV_MAX_PIXELS or x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] > TAP_CONV_MAX_PIXELS:
        return False
    return _plain_3x3_on_fused_path(conv, x) and _tap_conv() is not None


def skip_without_bias(skip: nn.Module, x: torch.Tensor):
    """A residual block's skip path on the folded path: ``(conv(x) minus its bias, conv.bias)`` for a
    1x1 convolution, ``(x, None)`` for an identity (the bias goes into ``residual``)."""
    if isinstance(skip, nn.Conv2d):
        return conv_without_bias(skip, x), skip.bias
    return x, None


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 kernel [O, C, 3, 3] of a convolution (padding 1) after nearest 2x upsampling as its four
    2x2 sub-pixel kernels [4*O, C, 2, 2], phase 2a+b major, in ``weight``'s dtype and memory format:
    output pixel (2i+a, 2j+b) reads source rows (i-1, i) with taps (w0, w1 + w2) when a = 0, rows (i, i+1)
    with taps (w0 + w1, w2) when a = 1, and columns likewise (the taps landing on one source pixel
    summed, in float32). ``conv2d(x, phase_kernels(w), padding=1)`` is [N, 4*O, H+1, W+1]; phase (a, b)
    of output pixel (2i+a, 2j+b) is at (i+a, j+b) (``PhaseUpsampled.materialize``)."""
    w = weight.float()

    def taps(t: torch.Tensor, dim: int, a: int) -> torch.Tensor:
        t0, t1, t2 = t.unbind(dim)
        return torch.stack((t0, t1 + t2) if a == 0 else (t0 + t1, t2), dim)

    out = torch.cat([taps(taps(w, 2, a), 3, b) for a in (0, 1) for b in (0, 1)], 0).to(weight.dtype)
    return out.contiguous(memory_format=torch.channels_last) if channels_last(weight) else out


@dataclass
class PhaseUpsampled:
    """An up block's upsampled output in sub-pixel form (``PHASE_UPSAMPLE``), handed to the next up block,
    which joins it to its skip connection in one kernel: ``z`` [N, 4*O, H+1, W+1] (the phase
    convolutions, without bias), ``bias`` [O]; stands for the [N, O, 2H, 2W] upsampled activation."""

    z: torch.Tensor
    bias: torch.Tensor

    def materialize(self) -> torch.Tensor:
        """The [N, O, 2H, 2W] activation with torch's ops (the fallback of the fused kernel), in ``z``'s
        memory format."""
        n, o4, h1, w1 = self.z.shape
        o, h, w = o4 // 4, h1 - 1, w1 - 1
        phases = [self.z[:, (2 * a + b) * o:(2 * a + b + 1) * o, a:a + h, b:b + w] for a in (0, 1) for b in (0, 1)]
        y = torch.stack(phases, 2).view(n, o, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, o, 2 * h, 2 * w)
        y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y.contiguous(memory_format=torch.channels_last) if channels_last(self.z) else y


def channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is 4-D channels-last (NHWC) memory, and not also plain contiguous."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def join_skip(x, skip: torch.Tensor) -> torch.Tensor:
    """``cat([x, skip], 1)``; a ``PhaseUpsampled`` ``x`` is interleaved, biased and joined to ``skip`` in
    one fused kernel (torch's ops if the kernel cannot run)."""
    skip = materialize(skip)
    if isinstance(x, PhaseUpsampled):
        fn = _fused_norm()
        if fn is not None and fn.phase_upsample_supports(x.z, x.bias, skip):
            y = _try_fused(lambda: fn.phase_upsample(x.z, x.bias, skip))
            if y is not None:
                return y
    return torch.cat([materialize(x), skip], dim=1)


def upsample_conv(owner: nn.Module, conv: nn.Conv2d, x: torch.Tensor, sub_pixel: bool):
    """``conv(upsample_nearest_2x(x))``; with ``sub_pixel`` on the fused path (channels-last ``x`` and
    weight) its sub-pixel form instead: a ``PhaseUpsampled`` for the next block's ``join_skip``, the phase
    kernels a derived weight of ``owner``."""
    if sub_pixel and fold_biases(x) and channels_last(x) and channels_last(conv.weight):
        kernels = derived_weight(owner, "_phase_kernels", (conv.weight,), phase_kernels)
        return PhaseUpsampled(F.conv2d(x, kernels, None, padding=1), conv.bias)
    return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def conv3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv3 twice, plus a 1x1 shortcut when channels change; output scaled by sqrt(1/2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = GroupNorm32(c_in)
        self.conv1 = conv3(c_in, c_out)
        self.norm2 = GroupNorm32(c_out)
        self.conv2 = conv3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return materialize(self.joined(x))

    def joined(self, x):
        """``forward`` for a tensor or a ``PendingResidual`` ``x``; on the fused path the output is a
        ``PendingResidual`` (its join runs in the next GroupNorm's kernels), else a tensor."""
        if fold_biases(x.like() if isinstance(x, PendingResidual) else x):  # the same sums, biases in the fused kernels
            x, h = norm_of_joined(self.norm1, x, silu=True)
            h = conv_without_bias(self.conv1, h, taps=True)
            h = conv_without_bias(self.conv2, self.norm2(h, silu=True, add=self.conv1.bias), taps=True)
            skip, skip_bias = skip_without_bias(self.shortcut, x)
            return PendingResidual(h, skip, SKIP_SCALE, self.conv2.bias, skip_bias)
        x = materialize(x)
        h = self.conv1(self.norm1(x, silu=True))
        h = self.conv2(self.norm2(h, silu=True))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens [B, T, C]: qkv (no bias) and proj (with bias)."""

    def __init__(self, channels: int, num_heads: int = NUM_HEADS):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(channels, channels * 3, bias=False)
        self.proj = nn.Linear(channels, channels)
        self.backend = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.backend == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.backend == "math":
            scale = (c // self.num_heads) ** -0.5
            weights = torch.softmax(((q * scale) @ k.transpose(-2, -1)).float(), dim=-1).to(v.dtype)
            out = weights @ v
        else:
            raise ValueError(f"unknown attention backend {self.backend!r}; use one of {ATTENTION_BACKENDS}")
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class MVAttention(nn.Module):
    """Cross-view attention block: tokens of all 4 views of an object attend to each other."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = GroupNorm32(channels)
        self.attn = SelfAttention(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return materialize(self.joined(x))

    def joined(self, x):
        """``forward`` for a tensor or a ``PendingResidual`` ``x``; on the fused path the output is a
        ``PendingResidual`` (see ``ResnetBlock.joined``), else a tensor."""
        x, y = norm_of_joined(self.norm, x)
        bv, c, h, w = x.shape
        b = bv // NUM_VIEWS
        y = y.reshape(b, NUM_VIEWS, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, NUM_VIEWS * h * w, c)
        y = self.attn(y)
        y = y.reshape(b, NUM_VIEWS, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        if fused_joins_apply(y) and _fused_norm().residual_supports(y, x):
            return PendingResidual(y, x, SKIP_SCALE)
        return residual(y, x, SKIP_SCALE)


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_layers: int, attention: bool, downsample: bool):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(num_layers)])
        self.attns = nn.ModuleList([MVAttention(c_out) for _ in range(num_layers)]) if attention else None
        self.downsample = conv3(c_out, c_out, stride=2) if downsample else None

    def forward(self, x):
        """``x`` a tensor or a ``PendingResidual``; returns the output and the skips it pushes, either of them
        possibly ``PendingResidual`` on the fused path (``materialize`` gives the tensors)."""
        pushed = []
        for i, net in enumerate(self.nets):
            x = net.joined(x)
            if self.attns is not None:
                x = self.attns[i].joined(x)
            pushed.append(x)
        if self.downsample is not None:
            x = self.downsample(materialize(x))
            pushed.append(x)
        return x, pushed


class MidBlock(nn.Module):
    def __init__(self, channels: int, attention: bool):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels), ResnetBlock(channels, channels)])
        self.attns = nn.ModuleList([MVAttention(channels)]) if attention else None

    def forward(self, x):
        """A tensor or ``PendingResidual`` in and out (see ``ResnetBlock.joined``)."""
        x = self.nets[0].joined(x)
        if self.attns is not None:
            x = self.attns[0].joined(x)
        return self.nets[1].joined(x)


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_skip_last: int, c_out: int, num_layers: int, attention: bool, upsample: bool):
        super().__init__()
        nets = []
        for j in range(num_layers):
            c_x = c_in if j == 0 else c_out
            c_skip = c_skip_last if j == num_layers - 1 else c_out
            nets.append(ResnetBlock(c_x + c_skip, c_out))
        self.nets = nn.ModuleList(nets)
        self.attns = nn.ModuleList([MVAttention(c_out) for _ in range(num_layers)]) if attention else None
        self.upsample = conv3(c_out, c_out) if upsample else None

    def forward(self, x, skips: List[torch.Tensor]):
        """``x``: the previous block's output (a tensor, or ``PhaseUpsampled``); returns this block's, upsampled
        when it has an upsampling convolution (in sub-pixel form on the fused path: ``PHASE_UPSAMPLE``)."""
        for j, net in enumerate(self.nets):
            x = net.joined(join_skip(x, skips[-1 - j]))
            if self.attns is not None:
                x = self.attns[j].joined(x)
        if self.upsample is None:
            return x
        return upsample_conv(self, self.upsample, materialize(x), PHASE_UPSAMPLE)


class MVUNet(nn.Module):
    """The asymmetric U-Net: [B*4, 9, 256, 256] -> [B*4, 14, s, s] (docs/conventions.md#model)."""

    def __init__(
        self,
        down_channels: Sequence[int],
        down_attention: Sequence[bool],
        mid_attention: bool,
        up_channels: Sequence[int],
        up_attention: Sequence[bool],
        in_channels: int = 9,
        out_channels: int = 14,
        layers_per_block: int = 2,
    ):
        super().__init__()
        down, up = list(down_channels), list(up_channels)
        self.conv_in = conv3(in_channels, down[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(down[max(i - 1, 0)], down[i], layers_per_block, bool(down_attention[i]), i < len(down) - 1)
            for i in range(len(down))
        )
        self.mid_block = MidBlock(down[-1], bool(mid_attention))
        self.up_blocks = nn.ModuleList(
            UpBlock(
                up[max(i - 1, 0)],
                down[max(-2 - i, -len(down))],
                up[i],
                layers_per_block + 1,
                bool(up_attention[i]),
                i < len(up) - 1,
            )
            for i in range(len(up))
        )
        self.norm_out = GroupNorm32(up[-1])
        self.conv_out = conv3(up[-1], out_channels)
        self.skips_per_up_block = layers_per_block + 1

    def input_conv(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_in(x)``; on the fused path the implicit-GEMM kernel where ``implicit_conv.CHOICES`` lists the
        shape (the 9 channels read unpadded, bias in the kernel), else with channels-last ``x`` the input channels
        zero-padded to ``PAD_INPUT_CHANNELS`` for cuDNN (the same sum; weights padded once, a derived weight)."""
        c = x.shape[1]
        if not fold_biases(x):
            return self.conv_in(x)
        y = implicit_conv_or_none(self.conv_in, x, self.conv_in.bias)
        if y is not None:
            return y
        if PAD_INPUT_CHANNELS > c and channels_last(x) and channels_last(self.conv_in.weight):
            pad = PAD_INPUT_CHANNELS - c
            weight = derived_weight(self, "_conv_in_padded", (self.conv_in.weight,),
                                    lambda w: F.pad(w, (0, 0, 0, 0, 0, pad)).contiguous(memory_format=torch.channels_last),
                                    params=(pad,))
            x = F.pad(x.permute(0, 2, 3, 1), (0, pad)).permute(0, 3, 1, 2)  # one copy, NHWC memory
            return F.conv2d(x, weight, self.conv_in.bias, padding=1)
        return self.conv_in(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything up to the output convolution: ``silu(norm_out(...))`` [B*4, up[-1], s, s]."""
        h = self.input_conv(x)
        skips = [h]
        for block in self.down_blocks:
            h, pushed = block(h)
            skips.extend(pushed)
        h = self.mid_block(h)
        n = self.skips_per_up_block
        for block in self.up_blocks:
            h = block(h, skips[-n:])
            del skips[-n:]
        return norm_of_joined(self.norm_out, h, silu=True)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.features(x))


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """Switch every attention layer under ``module`` to ``"sdpa"`` (default) or ``"math"``."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; use one of {ATTENTION_BACKENDS}")
    for m in module.modules():
        if isinstance(m, SelfAttention):
            m.backend = backend
