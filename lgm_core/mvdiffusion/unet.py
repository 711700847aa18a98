"""Multi-view diffusion UNet of MVDream / ImageDream, checkpoint-exact.

State-dict names and shapes equal the hub checkpoints (``ashawkey/mvdream-sd2.1-diffusers``,
``ashawkey/imagedream-ipmv-diffusers``, ``unet/*.safetensors``), which are the original LDM keys
without the ``model.diffusion_model.`` prefix. Spec: ``shared/docs/mvdream_spec.md`` §2.

Tensor conventions
------------------
* Rows are **object-major**: rows ``b*F .. b*F+F-1`` are the ``F`` frames (views) of object ``b``.
* ``x``: latents ``[B*F, C, h, w]``; ``timesteps``: ``[B*F]`` (any float/int dtype);
  ``context``: text hidden states ``[B*F, T, context_dim]``; ``camera``: flattened row-major 4x4
  camera-to-world matrices ``[B*F, 16]`` (Blender z-up frame, see :mod:`.cameras`).
* ImageDream: ``ip``: CLIP-ViT penultimate hidden states ``[B*F, N, 1280]``; ``ip_img``: reference
  latent ``[B, C, h, w]`` written into the last frame of every object.

GroupNorms are ``lgm_core.models.unet.GroupNorm32`` (the project's one GroupNorm policy: float32
statistics as the original LDM ``GroupNorm32``; in fp16/bf16 CUDA inference captured in CUDA graphs
(the pipeline's default) GroupNorm (+ the timestep-embedding add before it and the SiLU that
follows it in ResBlocks and the output head) and the feed-forward GEGLU run as fused Triton kernels,
switch ``LGM_FUSED_NORM=0``). Attention is :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient
kernels on CUDA). The self-attention of every transformer runs jointly over the ``F`` frames of
one object (``[B, F*h*w, C]``); everything else runs per frame.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..models.derived import derived_weight, drop_derived_weights
from ..models.unet import (GroupNorm32, conv_without_bias, fold_biases, fused_joins_apply, geglu, join_skip,
                           layer_norm, residual, skip_without_bias, upsample_conv)

__all__ = ["MultiViewUNet", "Resampler", "timestep_embedding"]

# Self-attention's q, k and v projections as one GEMM with the three weights concatenated (a cached copy),
# on the fused path only (``fused_joins_apply``; elsewhere three GEMMs as the original): larger GEMMs run
# closer to the tensor cores' peak.
FUSE_QKV = True
# The upsampling convolutions in sub-pixel form (as LGM's, lgm_core.models.unet.PHASE_UPSAMPLE) on the fused
# path, for at most this many output channels; 0 = off (the default). H200, alone
# (benchmarks/results/probe_convs_h200.md): 640 channels at batch 1 / 16: 143 -> 113 / 2066 -> 1110 us;
# 1280 channels mixed (at 8x8, batch 16: 1715 -> 2250 us; at 4x4, batch 1: 41 -> 61 us). With 640 the
# batch-16 UNet step took 59.7 ms against 60.2 ms (probe_mv_kernels_b16_phase_h200.log); off by default
# because its effect on the pipeline's output against eager (the faithfulness check of docs/benchmarks.md,
# where ImageDream already sits at the noise level) was not measured.
PHASE_UPSAMPLE_MAX_CHANNELS = 0


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` (float32), **cos half first**, then sin:
    ``freq_i = exp(-ln(max_period) * i / half)``, ``i = 0..half-1``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _heads_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head SDPA on ``[N, L, heads*d]`` inputs (contiguous head slices), returns ``[N, Lq, heads*d]``."""
    n, lq, inner = q.shape
    d = inner // heads
    q = q.view(n, lq, heads, d).transpose(1, 2)
    k = k.view(n, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(n, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, lq, inner)


# ----------------------------------------------------------------------------------------------
# ImageDream image-prompt resampler (``image_embed``)
# ----------------------------------------------------------------------------------------------


class PerceiverAttention(nn.Module):
    """Latent queries attend to ``[image tokens ‖ latent tokens]``. Keys: norm1, norm2, to_q, to_kv, to_out."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        # The original scales q and k by d^-1/4 each and takes the softmax in fp32; SDPA computes the
        # same softmax(q k^T / sqrt(d)) v with fp32 accumulation on every backend.
        return self.to_out(_heads_attention(q, k.contiguous(), v.contiguous(), self.heads))


def _resampler_ff(dim: int, mult: int = 4) -> nn.Sequential:
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))


class Resampler(nn.Module):
    """Perceiver resampler: ``[N, T, embedding_dim]`` image features -> ``[N, num_queries, output_dim]``."""

    def __init__(self, dim: int = 1024, depth: int = 8, dim_head: int = 64, heads: int = 16,
                 num_queries: int = 8, embedding_dim: int = 768, output_dim: int = 1024, ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _resampler_ff(dim, ff_mult)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(x.dtype).expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


# ----------------------------------------------------------------------------------------------
# UNet building blocks (LDM openaimodel names)
# ----------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """``h = in_layers(x) + emb_layers(emb); h = out_layers(h); return skip(x) + h`` (GroupNorm eps 1e-5)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0,
                 out_channels: Optional[int] = None, use_scale_shift_norm: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # in_layers / out_layers as written in the Sequentials (names = checkpoint keys); GroupNorm and
        # the SiLU after it are one call (one fused kernel pass on the CUDA fp16 path)
        if (not self.use_scale_shift_norm and not self.training and self.in_layers[2].bias is not None
                and self.out_layers[3].bias is not None and fold_biases(x)):
            return self._forward_folded(x, emb)
        h = self.in_layers[2](self.in_layers[0](x, silu=True))
        emb_out = self.emb_layers(emb).to(h.dtype)  # [N, C]
        if self.use_scale_shift_norm:
            scale, shift = emb_out[:, :, None, None].chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[2](self.out_layers[1](h)))
        else:  # GroupNorm(h + emb_out) + SiLU: the add is fused into the norm on the fast path
            h = self.out_layers[3](self.out_layers[2](self.out_layers[0](h, silu=True, add=emb_out)))
        return self.skip_connection(x) + h

    def _forward_folded(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The same sums on the fused path: the first convolution's bias joins the timestep embedding in
        the second GroupNorm's ``add`` (fp32), the second's and the skip's biases join the skip in one
        ``residual`` kernel (lgm_core.models.unet.fold_biases)."""
        conv1, conv2 = self.in_layers[2], self.out_layers[3]
        h = conv_without_bias(conv1, self.in_layers[0](x, silu=True))
        add = self.emb_layers(emb).to(h.dtype).float() + conv1.bias.float()  # [N, C]
        h = conv_without_bias(conv2, self.out_layers[0](h, silu=True, add=add))
        skip, skip_bias = skip_without_bias(self.skip_connection, x)
        return residual(skip, h, 1.0, skip_bias, conv2.bias)


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling + 3x3 convolution; on the fused path, for at most ``PHASE_UPSAMPLE_MAX_CHANNELS``
    output channels (off by default), in sub-pixel form (``lgm_core.models.unet.PhaseUpsampled``: the next output block
    joins it to its skip in one kernel)."""

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor):
        return upsample_conv(self, self.conv, x, self.conv.out_channels <= PHASE_UPSAMPLE_MAX_CHANNELS)


class GEGLU(nn.Module):
    """``proj`` -> [value ‖ gate]; returns ``value * gelu(gate)`` (exact erf GELU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return geglu(self.proj(x))  # one fused kernel on the CUDA fp16 inference path


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MemoryEfficientCrossAttention(nn.Module):
    """Multi-head attention (q/k/v without bias, ``to_out.0`` with bias), scale 1/sqrt(dim_head).

    With ``ip_dim > 0`` (ImageDream cross-attention) the last ``ip_dim`` context tokens are image
    tokens attended through separate ``to_k_ip``/``to_v_ip``; the two attention results are summed
    (image branch scaled by ``ip_weight``) before ``to_out``.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0, ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = dim_head * heads
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.ip_dim = int(ip_dim)
        self.ip_weight = float(ip_weight)
        if self.ip_dim > 0:  # registered first: state-dict order of the checkpoints
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))
        # cat([to_q, to_k, to_v].weight) for FUSE_QKV: a derived weight (lgm_core.models.derived)
        self.register_buffer("_qkv", None, persistent=False)

    def _qkv_weight(self) -> torch.Tensor:
        """``cat([to_q, to_k, to_v].weight)`` ``[3*inner, query_dim]``, cached until a weight is replaced,
        moved, cast or changed in place (:func:`lgm_core.models.derived.derived_weight`; after in-place
        changes of inference-mode weights call :meth:`drop_qkv_cache`, which
        ``MultiViewPipeline.release_cuda_graphs`` does)."""
        return derived_weight(self, "_qkv", (self.to_q.weight, self.to_k.weight, self.to_v.weight),
                              lambda *w: torch.cat(w, 0))

    def drop_qkv_cache(self) -> None:
        """Forget the concatenated q/k/v weights (rebuilt on the next fused call)."""
        drop_derived_weights(self)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` [N, L, C]; ``context`` [N, T, D] (one per row), or [N / k, T, D] shared by each run of
        k consecutive rows (the frames of one object): their queries then attend together as one row of
        k*L queries, the same attention with k times fewer key/value projections."""
        if context is None and self.ip_dim == 0 and FUSE_QKV and fused_joins_apply(x):
            q, k, v = F.linear(x, self._qkv_weight()).chunk(3, dim=-1)
            return self.to_out(_heads_attention(q, k, v, self.heads))
        q = self.to_q(x)
        context = x if context is None else context
        n, length, inner = q.shape
        if context.shape[0] != n:
            if context.shape[0] == 0 or n % context.shape[0]:
                raise ValueError(f"context has {context.shape[0]} rows for {n} query rows: give one per row "
                                 "or one per group of consecutive rows")
            q = q.reshape(context.shape[0], -1, inner)
        if self.ip_dim > 0:
            token_ctx, ip_ctx = context[:, : -self.ip_dim], context[:, -self.ip_dim:]
            out = _heads_attention(q, self.to_k(token_ctx), self.to_v(token_ctx), self.heads)
            out_ip = _heads_attention(q, self.to_k_ip(ip_ctx), self.to_v_ip(ip_ctx), self.heads)
            out = out + self.ip_weight * out_ip
        else:
            out = _heads_attention(q, self.to_k(context), self.to_v(context), self.heads)
        return self.to_out(out.reshape(n, length, inner))


class BasicTransformerBlock3D(nn.Module):
    """Pre-norm block: joint multi-view self-attention, (image+)text cross-attention, GEGLU MLP."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, dropout: float = 0.0,
                 ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        self.attn1 = MemoryEfficientCrossAttention(dim, None, n_heads, d_head, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = MemoryEfficientCrossAttention(dim, context_dim, n_heads, d_head, dropout,
                                                   ip_dim=ip_dim, ip_weight=ip_weight)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        n, length, c = x.shape
        # joint self-attention over the F frames of each object: [(B F), L, C] -> [B, F L, C]
        xm = x.reshape(n // num_frames, num_frames * length, c)
        # x = attn1(norm1(x)) + x; x = attn2(norm2(x), ctx) + x; x = ff(norm3(x)) + x, each residual add
        # joined with the next LayerNorm (one fused kernel on the CUDA fp16 inference path)
        xm, h = layer_norm(self.norm2, self.attn1(layer_norm(self.norm1, xm)), xm)
        x, h = layer_norm(self.norm3, self.attn2(h.reshape(n, length, c), context), xm.reshape(n, length, c))
        return self.ff(h) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm (eps 1e-6) -> Linear ``proj_in`` -> blocks -> Linear ``proj_out`` -> + input."""

    def __init__(self, in_channels: int, n_heads: int, d_head: int, context_dim: int, depth: int = 1,
                 dropout: float = 0.0, ip_dim: int = 0, ip_weight: float = 1.0):
        super().__init__()
        inner = n_heads * d_head
        self.norm = GroupNorm32(in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock3D(inner, n_heads, d_head, context_dim, dropout, ip_dim, ip_weight)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, num_frames)
        x = self.proj_out(x)
        return x.reshape(b, h, w, -1).permute(0, 3, 1, 2) + x_in


class MVSequential(nn.Sequential):
    """Sequential container that routes (emb, context, num_frames) to the layers that take them."""

    def forward(self, x, emb, context, num_frames):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# The UNet
# ----------------------------------------------------------------------------------------------


class MultiViewUNet(nn.Module):
    """MVDream / ImageDream ``MultiViewUNetModel``.

    Constructor keys are those of the hub ``unet/config.json`` (unknown keys such as ``_class_name``
    are ignored). ``ip_dim > 0`` switches on ImageDream (Resampler ``image_embed`` with hard-coded
    depth 4, 12 heads of 64, input width ``ip_input_dim`` = 1280, plus ``to_k_ip``/``to_v_ip``).
    ``ip_input_dim`` is this package's extension (absent from hub configs; only tiny test models
    change it). Call :meth:`forward` as the original, or :meth:`prepare_conditions` once and
    :meth:`forward_prepared` per denoising step (what :class:`MultiViewPipeline` does).
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        model_channels: int = 320,
        out_channels: int = 4,
        num_res_blocks: Union[int, Sequence[int]] = 2,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[int] = None,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        transformer_depth: int = 1,
        context_dim: Optional[int] = None,
        n_embed: Optional[int] = None,
        num_attention_blocks: Optional[Sequence[int]] = None,
        adm_in_channels: Optional[int] = None,
        camera_dim: Optional[int] = None,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
        ip_input_dim: int = 1280,
        **unused,
    ):
        super().__init__()
        if dims != 2:
            raise ValueError(f"only dims=2 is supported, got {dims}")
        if num_classes is not None or n_embed is not None:
            raise ValueError("class-conditional / codebook variants are not part of MVDream/ImageDream")
        if resblock_updown or not conv_resample:
            raise ValueError("resblock_updown=True / conv_resample=False are not used by MVDream/ImageDream")
        if context_dim is None:
            raise ValueError("context_dim is required (1024 for the SD2.1-based checkpoints)")
        if num_heads == -1 and num_head_channels == -1:
            raise ValueError("set num_heads or num_head_channels")
        if int(transformer_depth) != 1:
            raise ValueError("transformer_depth > 1 is not supported (the original port crashes on it)")
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks must be an int or have one entry per channel_mult level")
        self.config = dict(
            image_size=image_size, in_channels=in_channels, model_channels=model_channels,
            out_channels=out_channels, num_res_blocks=list(num_res_blocks),
            attention_resolutions=list(attention_resolutions), channel_mult=list(channel_mult),
            num_heads=num_heads, num_head_channels=num_head_channels, transformer_depth=transformer_depth,
            context_dim=context_dim, camera_dim=camera_dim, ip_dim=ip_dim, ip_weight=ip_weight,
            use_scale_shift_norm=use_scale_shift_norm,
        )
        if ip_input_dim != 1280:
            self.config["ip_input_dim"] = ip_input_dim
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.ip_dim = int(ip_dim or 0)
        self.camera_dim = camera_dim
        time_embed_dim = model_channels * 4

        def heads_for(ch: int) -> Tuple[int, int]:
            if num_head_channels == -1:
                return num_heads, ch // num_heads
            return ch // num_head_channels, num_head_channels

        def transformer(ch: int) -> SpatialTransformer3D:
            nh, dh = heads_for(ch)
            return SpatialTransformer3D(ch, nh, dh, context_dim, transformer_depth, dropout,
                                        ip_dim=self.ip_dim, ip_weight=ip_weight)

        if self.ip_dim > 0:  # built first: first in the checkpoints' state-dict order
            self.image_embed = Resampler(dim=context_dim, depth=4, dim_head=64, heads=12,
                                         num_queries=self.ip_dim, embedding_dim=ip_input_dim,
                                         output_dim=context_dim, ff_mult=4)
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_embed_dim), nn.SiLU(),
                                        nn.Linear(time_embed_dim, time_embed_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, time_embed_dim), nn.SiLU(),
                                              nn.Linear(time_embed_dim, time_embed_dim))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, time_embed_dim, dropout, cout, use_scale_shift_norm)

        self.input_blocks = nn.ModuleList([MVSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        chans: List[int] = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for nr in range(num_res_blocks[level]):
                layers: List[nn.Module] = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions and (num_attention_blocks is None
                                                    or nr < num_attention_blocks[level]):
                    layers.append(transformer(ch))
                self.input_blocks.append(MVSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(MVSequential(Downsample(ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = MVSequential(res(ch, ch), transformer(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks[level] + 1):
                layers = [res(ch + chans.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions and (num_attention_blocks is None
                                                    or i < num_attention_blocks[level]):
                    layers.append(transformer(ch))
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(MVSequential(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(),
                                 nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def load_state_dict(self, *args, **kwargs):
        """``nn.Module.load_state_dict``, then the derived weights (concatenated q/k/v) are dropped (an in-place
        copy into inference-mode weights moves no version counter, so the cache could not tell)."""
        result = super().load_state_dict(*args, **kwargs)
        drop_derived_weights(self)
        return result

    # ------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    def prepare_conditions(
        self,
        context: torch.Tensor,
        camera: Optional[torch.Tensor] = None,
        ip: Optional[torch.Tensor] = None,
    ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """Step-independent part of the forward pass.

        Returns ``(camera_emb [N, 4*model_channels] or None, context [M, T(+ip_dim), context_dim])``:
        the camera MLP output and the text context with the Resampler's image tokens appended.
        ``context`` and ``ip`` have M rows: one per UNet row (M = N, as the original), or one per object
        (M = N / num_frames) when every frame of an object has the same conditions, as in the pipeline:
        the Resampler and the cross-attention key/value projections then run once per object.
        """
        dtype = self.dtype
        cam_emb = None
        if self.camera_dim is not None:
            if camera is None:
                raise ValueError("this UNet has a camera MLP: pass camera [N, 16]")
            cam_emb = self.camera_embed(camera.to(dtype))
        context = context.to(dtype)
        if self.ip_dim > 0:
            if ip is None:
                raise ValueError("ImageDream UNet (ip_dim > 0) needs `ip` image features")
            context = torch.cat([context, self.image_embed(ip.to(dtype))], dim=1)
        return cam_emb, context

    def forward_prepared(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        camera_emb: Optional[torch.Tensor],
        context: torch.Tensor,
        num_frames: int = 1,
        ip_img: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """UNet pass with conditions from :meth:`prepare_conditions` (``context``: one row per row of ``x``
        or one per object of ``num_frames`` rows). ``x`` is not modified."""
        if x.shape[0] % num_frames != 0:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_frames={num_frames}")
        if context.shape[0] not in (x.shape[0], x.shape[0] // num_frames):
            raise ValueError(f"context has {context.shape[0]} rows: expected {x.shape[0]} (one per row) or "
                             f"{x.shape[0] // num_frames} (one per object of {num_frames} frames)")
        dtype = self.dtype
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if camera_emb is not None:
            emb = emb + camera_emb
        h = x.to(dtype)
        if self.ip_dim > 0:
            if ip_img is None:
                raise ValueError("ImageDream UNet (ip_dim > 0) needs `ip_img` reference latents")
            frames = h.view(-1, num_frames, *h.shape[1:])
            ref = ip_img.to(dtype).unsqueeze(1)
            h = torch.cat([frames[:, :-1], ref], dim=1).flatten(0, 1)
        hs = []
        for block in self.input_blocks:
            h = block(h, emb, context, num_frames)
            hs.append(h)
        h = self.middle_block(h, emb, context, num_frames)
        for block in self.output_blocks:
            h = block(join_skip(h, hs.pop()), emb, context, num_frames)
        return self.out[2](self.out[0](h, silu=True))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        camera: Optional[torch.Tensor] = None,
        num_frames: int = 1,
        ip: Optional[torch.Tensor] = None,
        ip_img: Optional[torch.Tensor] = None,
        y: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> torch.Tensor:
        """Noise prediction (epsilon) with the shape of ``x`` [B*F, C, h, w] (all rows, reference
        rows included). Unlike the original, ``x`` is NOT modified in place (the original wrote
        ``ip_img`` into the caller's tensor)."""
        if y is not None:
            raise ValueError("class labels are not supported")
        if timesteps is None or context is None:
            raise ValueError("timesteps and context are required")
        cam_emb, ctx = self.prepare_conditions(context, camera, ip)
        return self.forward_prepared(x, timesteps, cam_emb, ctx, num_frames, ip_img)
