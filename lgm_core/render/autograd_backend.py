"""Differentiable pure-PyTorch rasterizer (autograd), for training where gsplat is not available.

:func:`render_views` is this backend's side of the render contract (:mod:`lgm_core.render.common`),
:func:`rasterize` its compositing stage, with the same inputs and semantics as
:func:`lgm_core.render.torch_backend.rasterize` (docs/conventions.md#rasterizer-semantics):
16×16 tiles, a Gaussian listed in every tile of its 3σ footprint rectangle, per pixel front to
back by camera depth (stable), α = min(0.99, o·exp(−½ dᵀΣ⁻¹d)), α < 1/255 skipped, a pixel stops
(without using the Gaussian) once its transmittance would fall below 1e-4.

How: every Gaussian is evaluated at the pixel centres of the 8×8 blocks that lie in its footprint
rectangle *and* meet the box around its α ≥ 1/255 ellipse (pixels outside that ellipse are
skipped by the rule anyway, so nothing changes), in a packed pixel-major layout [64, P]
(P (Gaussian, block) pairs, sorted by block then depth; no padding). The transmittance is a
segmented cumulative sum of log(1 − α) in float64 (one segment per block), so T before and after
each Gaussian come out of one scan; the stop rule is the mask ``T_after >= 1e-4`` (T only
decreases along a block's list). A gradient-free pre-pass first drops, per block, the pairs after
the last one that any pixel still uses (they cannot change the result), which in dense scenes
removes most of the work. Everything is out of place, so gradients reach means2d, conics,
opacities and features (depth order and footprints are discrete and get none, as in 3DGS).

Memory: roughly 80 bytes per kept pair and pixel are held for backward, so this path is meant
for small renders (training at 64-128 px, tests). The forward-only
:mod:`~lgm_core.render.torch_backend` stays the fast bounded-memory renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .common import ALPHA_MAX, ALPHA_MIN, T_MIN, SplatInputs, ViewRenders, render_projected
from .torch_backend import TILE

SUB = 4
"""Pixels are evaluated in SUB×SUB blocks (TILE is a multiple of SUB, so a block never straddles
the original's 16×16 footprint rectangle)."""
_SUB_PIX = SUB * SUB
_LOG_T_MIN = math.log(T_MIN)


@dataclass
class _Pairs:
    """(camera, Gaussian, block) pairs sorted by block, then depth."""

    cam: torch.Tensor  # [P] long
    gid: torch.Tensor  # [P] long
    block: torch.Tensor  # [P] long, global block id (camera-major, then block row, column)
    px: torch.Tensor  # [P] float32, the block's left pixel edge
    py: torch.Tensor  # [P] float32, the block's top pixel edge

    def select(self, keep: torch.Tensor) -> "_Pairs":
        idx = keep.nonzero(as_tuple=True)[0]
        return _Pairs(self.cam[idx], self.gid[idx], self.block[idx], self.px[idx], self.py[idx])


def _block_basis(device) -> torch.Tensor:
    """[SUB², 6] basis (lx², lx·ly, ly², lx, ly, 1) of the pixel centres of a block, relative to its
    top-left corner, pixels row-major."""
    i = torch.arange(SUB, dtype=torch.float32, device=device) + 0.5
    ly, lx = torch.meshgrid(i, i, indexing="ij")
    lx, ly = lx.reshape(-1), ly.reshape(-1)
    return torch.stack([lx * lx, lx * ly, ly * ly, lx, ly, torch.ones_like(lx)], dim=-1)


@torch.no_grad()
def _make_pairs(means2d, conics, depths, radii, opacities, width, height) -> _Pairs:
    device = means2d.device
    TX, TY = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    SX, SY = TX * (TILE // SUB), TY * (TILE // SUB)
    vis = (radii > 0) & (opacities >= ALPHA_MIN)
    cam, gid = vis.nonzero(as_tuple=True)
    order = torch.sort(depths[cam, gid], stable=True).indices
    cam, gid = cam[order], gid[order]
    m2d = means2d[cam, gid].float()
    # the original's footprint: the 16x16 tiles touched by the 3-sigma square (pixel-index space)
    r = radii[cam, gid].to(torch.float32)

    def tile_range(m, extent):
        lo = torch.clamp(torch.trunc((m - 0.5 - r) / TILE), 0, extent).long() * TILE
        hi = torch.clamp(torch.trunc((m - 0.5 + r + TILE - 1) / TILE), 0, extent).long() * TILE
        return lo, hi

    x0, x1 = tile_range(m2d[:, 0], TX)
    y0, y1 = tile_range(m2d[:, 1], TY)
    # within it only pixels with alpha >= 1/255 matter: the ellipse q <= 2 ln(255 o), boxed (+ margin)
    cab = conics[cam, gid].float()
    o = opacities[cam, gid].float()
    det = (cab[:, 0] * cab[:, 2] - cab[:, 1] ** 2).clamp(min=1e-30)
    r2 = 2.0 * torch.log((o / ALPHA_MIN).clamp(min=1.0)) * 1.001 + 1e-3
    half = torch.stack([torch.sqrt(r2 * cab[:, 2] / det), torch.sqrt(r2 * cab[:, 0] / det)], -1) + 1.0
    half = torch.nan_to_num(half, nan=1e9, posinf=1e9).clamp(max=1e9)
    lo = torch.floor(m2d - half - 0.5)
    hi = torch.floor(m2d + half - 0.5)
    bx0 = torch.maximum(x0, lo[:, 0].clamp(0, width).long())
    bx1 = torch.minimum(x1 - 1, hi[:, 0].clamp(-1, width).long())
    by0 = torch.maximum(y0, lo[:, 1].clamp(0, height).long())
    by1 = torch.minimum(y1 - 1, hi[:, 1].clamp(-1, height).long())
    sx0 = torch.div(bx0, SUB, rounding_mode="floor")
    sy0 = torch.div(by0, SUB, rounding_mode="floor")
    nx = (torch.div(bx1, SUB, rounding_mode="floor") + 1 - sx0).clamp(min=0)
    ny = (torch.div(by1, SUB, rounding_mode="floor") + 1 - sy0).clamp(min=0)
    nx = torch.where(bx1 >= bx0, nx, torch.zeros_like(nx))
    ny = torch.where(by1 >= by0, ny, torch.zeros_like(ny))
    cnt = nx * ny
    P = int(cnt.sum())
    pair = torch.repeat_interleave(torch.arange(cam.numel(), device=device), cnt, output_size=P)
    off = torch.arange(P, device=device) - (torch.cumsum(cnt, 0) - cnt)[pair]
    w = nx[pair].clamp(min=1)
    by = sy0[pair] + torch.div(off, w, rounding_mode="floor")
    bx = sx0[pair] + off % w
    block = (cam[pair] * SY + by) * SX + bx
    block, perm = torch.sort(block, stable=True)  # stable: depth order kept within each block
    pair = pair[perm]
    px = ((block % SX) * SUB).to(torch.float32)
    py = (torch.div(block, SX, rounding_mode="floor") % SY * SUB).to(torch.float32)
    return _Pairs(cam[pair], gid[pair], block, px, py)


def _alpha(pairs: _Pairs, means2d, conics, opacities, max_alpha) -> torch.Tensor:
    """α [SUB², P] of every pair at its block's pixels (0 where below 1/255).

    log α = log o − ½ (a dx² + 2b dx dy + c dy²), d = pixel − mean, is written in the basis
    (lx², lx·ly, ly², lx, ly, 1) of block-local pixel centres: one [SUB², 6] x [6, P] product."""
    corner = torch.stack([pairs.px, pairs.py], dim=-1)  # [P, 2] block corners
    mean = means2d[pairs.cam, pairs.gid].float() - corner
    conic = conics[pairs.cam, pairs.gid].float()
    opac = opacities[pairs.cam, pairs.gid].float()
    ca, cb, cc = conic.unbind(-1)
    mx, my = mean.unbind(-1)
    coef = torch.stack([
        -0.5 * ca, -cb, -0.5 * cc, ca * mx + cb * my, cb * mx + cc * my,
        torch.log(opac) - 0.5 * (ca * mx * mx + 2.0 * cb * mx * my + cc * my * my),
    ], dim=0)  # [6, P]
    alpha = torch.clamp(torch.exp(_block_basis(mean.device) @ coef), max=max_alpha)
    return torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))


def _log_transmittance(alpha: torch.Tensor, block: torch.Tensor, n_blocks: int) -> tuple:
    """Per pair and pixel: (log(1 − α), log T after it) in float64, segmented by block."""
    counts = torch.bincount(block, minlength=n_blocks)
    first = (torch.cumsum(counts, 0) - counts)[block]  # index of each pair's block's first pair
    log_keep = torch.log1p(-alpha.double())
    csum = torch.cumsum(log_keep, dim=1)
    return log_keep, csum - (csum - log_keep)[:, first]


@torch.no_grad()
def _prune(pairs: _Pairs, means2d, conics, opacities, max_alpha, n_blocks) -> _Pairs:
    """Drop pairs that change nothing: α = 0 at every pixel, or after the last pair of their block
    that some pixel still uses (a suffix, so the transmittance of the kept pairs is unchanged).

    The scan here is float32: at each block's first pair the previous block's total is subtracted,
    so the running sum stays small; "still used" gets a margin of 0.05 in log T (far above the
    rounding error), so the pruning only ever keeps a few pairs too many, never too few."""
    P = pairs.block.numel()
    if P == 0:
        return pairs
    alpha = _alpha(pairs, means2d, conics, opacities, max_alpha)
    log_keep = torch.log1p(-alpha)
    block = pairs.block
    pos = torch.arange(P, device=block.device)
    starts = (block[1:] != block[:-1]).nonzero(as_tuple=True)[0] + 1  # first pair of each block but the first
    totals = torch.zeros(log_keep.shape[0], n_blocks, device=block.device).index_add_(1, block, log_keep)
    scan = log_keep.clone()
    scan[:, starts] -= totals[:, block[starts - 1]]
    log_T_after = torch.cumsum(scan, dim=1)
    used = ((log_T_after >= _LOG_T_MIN - 0.05) & (alpha > 0)).any(dim=0)
    last = torch.full((n_blocks,), -1, dtype=torch.long, device=block.device)
    last = last.scatter_reduce(0, block, torch.where(used, pos, torch.full_like(pos, -1)), "amax")
    keep = (pos <= last[block]) & (alpha > 0).any(dim=0)
    return pairs if bool(keep.all()) else pairs.select(keep)


def render_views(inputs: SplatInputs, item: int, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                 height: int, *, near: float, backgrounds: torch.Tensor, depth: bool = True) -> ViewRenders:
    """:func:`lgm_core.render.torch_backend.render_views` with this module's differentiable
    :func:`rasterize`: gradients reach the inputs' means, scales, quaternions, opacities and colours."""
    return render_projected(rasterize, inputs, item, viewmats, Ks, width, height, near=near,
                            backgrounds=backgrounds, depth=depth)


def rasterize(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    width: int,
    height: int,
    *,
    max_alpha: float = ALPHA_MAX,
) -> tuple:
    """Composite projected Gaussians of C cameras front to back, differentiably.

    Inputs as :func:`lgm_core.render.torch_backend.rasterize`: ``means2d`` [C,N,2] (pixel-centre
    convention), ``conics`` [C,N,3], ``depths`` [C,N], ``radii`` [C,N] (0 = culled),
    ``opacities`` [C,N] or [N], ``features`` [C,N,D] or [N,D].
    Returns (``accum`` [C,H,W,D] = Σ fᵢαᵢTᵢ, ``alpha`` [C,H,W,1] = Σ αᵢTᵢ), float32, no background.
    """
    device = means2d.device
    C, N = means2d.shape[:2]
    D = features.shape[-1]
    SX = (width + TILE - 1) // TILE * (TILE // SUB)
    SY = (height + TILE - 1) // TILE * (TILE // SUB)
    n_blocks = C * SY * SX
    if opacities.dim() == 1:
        opacities = opacities[None].expand(C, N)
    if features.dim() == 2:
        features = features[None].expand(C, N, D)

    pairs = _make_pairs(means2d, conics, depths, radii, opacities, width, height)
    pairs = _prune(pairs, means2d, conics, opacities, max_alpha, n_blocks)
    alpha = _alpha(pairs, means2d, conics, opacities, max_alpha)  # differentiable from here on
    log_keep, log_T_after = _log_transmittance(alpha, pairs.block, n_blocks)
    used = (log_T_after >= _LOG_T_MIN).detach()
    T_before = torch.exp(log_T_after - log_keep)
    weight = torch.where(used, alpha.double() * T_before, torch.zeros_like(T_before)).float()  # α·T [64,P]
    feat = features[pairs.cam, pairs.gid].float()
    accum = torch.zeros(_SUB_PIX, n_blocks, D, dtype=torch.float32, device=device)
    accum = accum.index_add(1, pairs.block, weight[..., None] * feat[None])
    acc_alpha = torch.zeros(_SUB_PIX, n_blocks, dtype=torch.float32, device=device).index_add(1, pairs.block, weight)
    # [64 = (SUB rows, SUB cols), C*SY*SX blocks] -> [C, H, W]
    accum = accum.view(SUB, SUB, C, SY, SX, D).permute(2, 3, 0, 4, 1, 5).reshape(C, SY * SUB, SX * SUB, D)
    acc_alpha = acc_alpha.view(SUB, SUB, C, SY, SX).permute(2, 3, 0, 4, 1).reshape(C, SY * SUB, SX * SUB, 1)
    return accum[:, :height, :width], acc_alpha[:, :height, :width]
