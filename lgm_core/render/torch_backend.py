"""Pure-PyTorch tile rasterizer: runs on any device (CPU, CUDA, MPS), no compilation.

:func:`render_views` is this backend's side of the render contract (:mod:`lgm_core.render.common`);
:func:`rasterize` its compositing stage. It reproduces the original LGM rasterizer
(docs/conventions.md#rasterizer-semantics) step by step:

1. Projection (:func:`lgm_core.render.common.project`): near culling at z <= 0.2, EWA 2-D covariance
   with the 0.3 low-pass, footprint radius ceil(3·sqrt(λmax)).
2. Tiling: 16×16-pixel tiles; a Gaussian is listed in every tile of its square footprint rectangle
   (the original's ``getRect``); per tile the list is sorted front to back by camera depth
   (ties: lower Gaussian index first, like the original's stable radix sort).
3. Compositing per pixel, front to back: α = min(0.99, o·exp(-½ dᵀΣ⁻¹d)); α < 1/255 skipped; the
   pixel stops (without using that Gaussian) once its transmittance would drop below 1e-4;
   colour = Σ cᵢαᵢTᵢ + T·background, alpha = Σ αᵢTᵢ.

Vectorisation: each tile's list is walked in depth chunks (``K`` = 64 Gaussians deep, doubling up
to ``max_K`` as tiles finish, within the ``chunk_elems`` budget); for a chunk, log α for all 256
pixels of all active tiles is one matrix product (the quadratic form written in a 6-term basis of
tile-local pixel coordinates, log-opacity folded in), the transmittance a cumulative product
along the chunk, αT the difference of consecutive transmittances, and the colour one batched
matrix product. The early-stop rule is applied exactly (a virtual transmittance carries the
"would drop below 1e-4" state across chunks). Tiles whose pixels have all stopped or whose lists
are exhausted leave the active set.

Memory bound (per call, beyond inputs and outputs): the tile/Gaussian pair list is built in bands
of tile rows with at most ``max(max_pairs, visible Gaussians × tiles per row)`` pairs (≤ ~64
bytes per pair while sorting); the compositing working set is at most ``chunk_elems`` elements
(tiles × depth × 256) in two reusable float buffers and a bool mask (≈ 9 bytes × chunk_elems),
plus 6 KB of accumulators per active tile. Defaults: CPU ``max_pairs = chunk_elems = 2**21``
(≤ ~130 MB and ~19 MB); CUDA/MPS ``2**24`` (≤ ~1 GB and ~150 MB). Projection (done by the
caller, :func:`lgm_core.render.common.project`) needs ~120 bytes per Gaussian and camera.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import ALPHA_MAX, ALPHA_MIN, T_MIN, SplatInputs, ViewRenders, render_projected

TILE = 16
_TILE_PIX = TILE * TILE


def _default_limits(device: torch.device) -> tuple:
    if device.type == "cpu":
        return 2**21, 2**21
    return 2**24, 2**24


def _pixel_basis(device) -> torch.Tensor:
    """[256, 6] basis (lx², lx·ly, ly², lx, ly, 1) of pixel centres relative to the tile centre,
    pixels in row-major order within the tile."""
    i = torch.arange(TILE, dtype=torch.float32, device=device) + 0.5 - TILE / 2
    ly, lx = torch.meshgrid(i, i, indexing="ij")
    lx, ly = lx.reshape(-1), ly.reshape(-1)
    return torch.stack([lx * lx, lx * ly, ly * ly, lx, ly, torch.ones_like(lx)], dim=-1)


def render_views(inputs: SplatInputs, item: int, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                 height: int, *, near: float, backgrounds: torch.Tensor, depth: bool = True) -> ViewRenders:
    """Render batch item ``item`` of ``inputs`` into C cameras (``viewmats`` [C,4,4] OpenCV
    world-to-camera, ``Ks`` [C,3,3]) over ``backgrounds`` [C,3]: the shared stages of
    :func:`~lgm_core.render.common.render_projected` with this module's :func:`rasterize`."""
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
    K: int = 64,
    max_K: int = 1024,
    max_pairs: Optional[int] = None,
    chunk_elems: Optional[int] = None,
    max_alpha: float = ALPHA_MAX,
) -> tuple:
    """Composite projected Gaussians of C cameras front to back.

    Inputs per camera c and Gaussian n: ``means2d`` [C,N,2] (pixel-centre convention), ``conics``
    [C,N,3], ``depths`` [C,N], ``radii`` [C,N] (0 = culled), ``opacities`` [C,N] or [N],
    ``features`` [C,N,D] or [N,D] (colour channels, plus anything to be alpha-blended such as depth).
    Returns (``accum`` [C,H,W,D] = Σ fᵢαᵢTᵢ, ``alpha`` [C,H,W,1] = Σ αᵢTᵢ), float32, no background.

    Tiles are walked ``K`` to ``max_K`` Gaussians deep at a time (deeper as fewer tiles remain
    active, within the ``chunk_elems`` budget); ``max_pairs`` bounds the tile/Gaussian pair list.
    """
    device = means2d.device
    C, N = means2d.shape[:2]
    D = features.shape[-1]
    dflt_pairs, dflt_chunk = _default_limits(device)
    max_pairs = int(max_pairs or dflt_pairs)
    chunk_elems = int(chunk_elems or dflt_chunk)
    TX = (width + TILE - 1) // TILE
    TY = (height + TILE - 1) // TILE
    accum = torch.zeros(C * TY * TX, _TILE_PIX, D, dtype=torch.float32, device=device)
    alpha = torch.zeros(C * TY * TX, _TILE_PIX, dtype=torch.float32, device=device)

    if opacities.dim() == 1:
        opacities = opacities[None].expand(C, N)
    if features.dim() == 2:
        features = features[None].expand(C, N, D)
    vis = (radii > 0) & (opacities >= ALPHA_MIN)
    cam, gid = vis.nonzero(as_tuple=True)
    M = cam.numel()
    if M > 0:
        # visible Gaussians sorted by depth (stable: ties keep the lower index first)
        order = torch.sort(depths[cam, gid], stable=True).indices
        cam, gid = cam[order], gid[order]
        m2d = means2d[cam, gid] - 0.5  # original's pixel-index space
        r = radii[cam, gid].to(torch.float32)
        x0 = torch.clamp(torch.trunc((m2d[:, 0] - r) / TILE), 0, TX).long()
        x1 = torch.clamp(torch.trunc((m2d[:, 0] + r + TILE - 1) / TILE), 0, TX).long()
        y0 = torch.clamp(torch.trunc((m2d[:, 1] - r) / TILE), 0, TY).long()
        y1 = torch.clamp(torch.trunc((m2d[:, 1] + r + TILE - 1) / TILE), 0, TY).long()
        touch = (x1 > x0) & (y1 > y0)
        if not bool(touch.all()):
            keep = touch.nonzero(as_tuple=True)[0]
            cam, gid, x0, x1, y0, y1 = cam[keep], gid[keep], x0[keep], x1[keep], y0[keep], y1[keep]
        if cam.numel() > 0:
            params = torch.cat([
                means2d[cam, gid],  # 0:2 pixel-centre coordinates
                conics[cam, gid],  # 2:5
                opacities[cam, gid, None],  # 5
                features[cam, gid],  # 6:6+D
            ], dim=-1).float()
            rows0 = cam * TY + y0  # global tile-row range [rows0, rows1)
            rows1 = cam * TY + y1
            nx = x1 - x0
            _composite_bands(params, rows0, rows1, x0, nx, C * TY, TX, TY, (K, max_K), max_pairs, chunk_elems,
                             max_alpha, accum, alpha)

    # [C*TY*TX, 16*16, D] -> [C, H, W, D]
    accum = accum.view(C, TY, TX, TILE, TILE, D).permute(0, 1, 3, 2, 4, 5).reshape(C, TY * TILE, TX * TILE, D)
    alpha = alpha.view(C, TY, TX, TILE, TILE).permute(0, 1, 3, 2, 4).reshape(C, TY * TILE, TX * TILE, 1)
    return accum[:, :height, :width].contiguous(), alpha[:, :height, :width].contiguous()


def _composite_bands(params, rows0, rows1, x0, nx, n_rows, TX, TY, K, max_pairs, chunk_elems, max_alpha,
                     accum, alpha):
    """Split the global tile rows into bands of bounded pair count, then composite each band."""
    device = params.device
    diff = torch.zeros(n_rows + 1, dtype=torch.long, device=device)
    diff.index_add_(0, rows0, nx)
    diff.index_add_(0, rows1, -nx)
    per_row = torch.cumsum(diff[:-1], 0).tolist()
    bands = []
    start, acc = 0, 0
    for row, n in enumerate(per_row):
        if acc > 0 and acc + n > max_pairs:
            bands.append((start, row))
            start, acc = row, 0
        acc += n
    bands.append((start, n_rows))
    basis_t = _pixel_basis(device).t().contiguous()  # [6, 256]
    for ra, rb in bands:
        sel = ((rows0 < rb) & (rows1 > ra)).nonzero(as_tuple=True)[0]  # still in depth order
        if sel.numel() == 0:
            continue
        r0 = torch.clamp(rows0[sel], min=ra)
        r1 = torch.clamp(rows1[sel], max=rb)
        bx0, bnx = x0[sel], nx[sel]
        cnt = bnx * (r1 - r0)
        P = int(cnt.sum())
        if P == 0:
            continue
        pair_g = torch.repeat_interleave(torch.arange(sel.numel(), device=device), cnt, output_size=P)
        first = torch.cumsum(cnt, 0) - cnt
        off = torch.arange(P, device=device) - first[pair_g]
        w = bnx[pair_g]
        tile_row = r0[pair_g] + torch.div(off, w, rounding_mode="floor") - ra
        tile_x = bx0[pair_g] + off % w
        tile = tile_row * TX + tile_x  # band-local tile id
        # pairs were generated in depth order: a stable sort by tile keeps it within each tile
        tile_sorted, perm = torch.sort(tile, stable=True)
        del tile, tile_row, tile_x, off, w
        pair_param = sel[pair_g[perm]]  # index into params, per tile in depth order
        del pair_g, perm
        n_tiles = (rb - ra) * TX
        counts = torch.bincount(tile_sorted, minlength=n_tiles)
        starts = torch.cumsum(counts, 0) - counts
        del tile_sorted
        _composite_tiles(params, pair_param, counts, starts, ra * TX, TX, TY, basis_t, K, chunk_elems,
                         max_alpha, accum, alpha)


def _composite_tiles(params, pair_param, counts, starts, tile_base, TX, TY, basis_t, K, chunk_elems, max_alpha,
                     accum, alpha):
    """Front-to-back compositing of one band's tiles, K Gaussians per tile at a time.

    State of the tiles still being composited is kept compactly (``act_*``); tiles whose lists are
    exhausted or whose pixels have all stopped are written to ``accum``/``alpha`` and dropped.
    """
    device = params.device
    D = accum.shape[-1]
    P = pair_param.numel()
    active = (counts > 0).nonzero(as_tuple=True)[0]
    n_act = active.numel()
    if n_act == 0:
        return
    act_acc = torch.zeros(n_act, _TILE_PIX, D, dtype=torch.float32, device=device)
    act_alpha = torch.zeros(n_act, _TILE_PIX, dtype=torch.float32, device=device)
    act_T = torch.ones(n_act, _TILE_PIX, dtype=torch.float32, device=device)  # virtual transmittance
    act_count, act_start = counts[active], starts[active]
    gtile = active + tile_base  # global tile ids
    act_cx = ((gtile % TX) * TILE + TILE / 2).to(torch.float32)  # tile centres, pixel-centre coords
    act_cy = ((torch.div(gtile, TX, rounding_mode="floor") % TY) * TILE + TILE / 2).to(torch.float32)
    K_min, K_max = K
    ar = torch.arange(max(K_min, K_max), device=device)
    buf_x = buf_w = torch.empty(0, dtype=torch.float32, device=device)
    # α >= 1/255 is kept: threshold_ keeps values strictly above its threshold
    a_min = torch.nextafter(torch.tensor(ALPHA_MIN, dtype=torch.float32), torch.tensor(0.0)).item()
    k = 0
    while True:
        n_act = gtile.numel()
        rem = int(act_count.max()) - k  # longest remaining list
        Kc = K_min  # chunk depth: grows as tiles finish, within the chunk_elems budget
        while Kc * 2 <= K_max and Kc < rem and n_act * Kc * 2 * _TILE_PIX <= chunk_elems:
            Kc *= 2
        tile_step = max(1, chunk_elems // (Kc * _TILE_PIX))
        need = min(n_act, tile_step) * Kc * _TILE_PIX
        if buf_x.numel() < need:
            buf_x = torch.empty(need, dtype=torch.float32, device=device)
            buf_w = torch.empty(need, dtype=torch.float32, device=device)
        for s in range(0, n_act, tile_step):
            e = min(n_act, s + tile_step)
            A = e - s
            pos = k + ar[:Kc]  # position within each tile's list
            valid = pos[None, :] < act_count[s:e, None]  # [A,K]
            idx = torch.clamp(act_start[s:e, None] + pos[None, :], max=P - 1)
            p = params[pair_param[idx]]  # [A,K,6+D]
            mx = p[..., 0] - act_cx[s:e, None]
            my = p[..., 1] - act_cy[s:e, None]
            ca, cb, cc = p[..., 2], p[..., 3], p[..., 4]
            log_o = torch.where(valid, torch.log(p[..., 5]), torch.full_like(mx, -1e4))
            # log α(l) = log o - ½ (a dx² + 2b dx dy + c dy²) with d = l - m, written in the basis
            # (lx², lx·ly, ly², lx, ly, 1) of tile-local pixel centres: one matrix product.
            coef = torch.stack([
                -0.5 * ca, -cb, -0.5 * cc,
                ca * mx + cb * my, cb * mx + cc * my,
                log_o - 0.5 * (ca * mx * mx + 2.0 * cb * mx * my + cc * my * my),
            ], dim=-1)  # [A,K,6]
            x = torch.matmul(coef, basis_t, out=buf_x[: A * Kc * _TILE_PIX].view(A, Kc, _TILE_PIX))
            x.exp_().clamp_(max=max_alpha)
            torch.nn.functional.threshold_(x, a_min, 0.0)  # α, skipped ones 0
            x.neg_().add_(1.0)  # 1 - α
            T0 = act_T[s:e]
            x[:, 0].mul_(T0)
            x.cumprod_(dim=1)  # transmittance after each Gaussian (virtual: ignores the stop)
            w = buf_w[: A * Kc * _TILE_PIX].view(A, Kc, _TILE_PIX)
            torch.sub(x[:, :-1], x[:, 1:], out=w[:, 1:])  # α T = T_before - T_after
            torch.sub(T0, x[:, 0], out=w[:, 0])
            w.masked_fill_(x < T_MIN, 0.0)  # the stop: this and all later Gaussians unused
            act_acc[s:e].add_(torch.bmm(w.transpose(1, 2), p[..., 6:]))
            act_alpha[s:e].add_(w.sum(dim=1))
            act_T[s:e] = x[:, -1]
        k += Kc
        still = (act_count > k) & (act_T >= T_MIN).any(dim=1)
        if bool(still.all()):
            continue
        done = (~still).nonzero(as_tuple=True)[0]
        accum.index_copy_(0, gtile[done], act_acc[done])
        alpha.index_copy_(0, gtile[done], act_alpha[done])
        keep = still.nonzero(as_tuple=True)[0]
        if keep.numel() == 0:
            return
        gtile, act_count, act_start = gtile[keep], act_count[keep], act_start[keep]
        act_cx, act_cy = act_cx[keep], act_cy[keep]
        act_acc, act_alpha, act_T = act_acc[keep], act_alpha[keep], act_T[keep]
