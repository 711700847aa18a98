"""Texture refinement: fit a mesh's texture to renders of the Gaussians it came from.

The baked texture (:func:`lgm_core.mesh.extract`) holds the local Gaussian colour at each surface
point; what a viewer sees of the Gaussians is an alpha-composite along each ray, which differs
(semi-transparent layers, colours blended over depth). Here the mesh is rasterised once per camera
(:mod:`lgm_core.mesh.raster`, fixed fragments), every covered pixel's perspective-correct UV is
kept, and the texture is fitted so the bilinear lookups (the same as
:func:`~lgm_core.mesh.render_mesh`'s) match the Gaussians' render of that pixel: a one-pass
back-projection (bilinear-weighted mean per texel), optionally refined by Adam on the L2 loss
(covered pixels only, so a silhouette mismatch does not pull colours). Texels no camera sees keep
their baked values.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..cameras import LGM_FOVY, LGM_RADIUS, Cameras, orbit_cameras
from ..gaussians import Gaussians
from .raster import project, rasterize
from .types import Mesh

REFINE_ELEVATIONS = (-20.0, 10.0, 40.0)


def refinement_cameras(views: int = 24, size: int = 256, radius: float = LGM_RADIUS, device=None) -> Cameras:
    """``views`` orbit cameras (azimuths evenly spaced, elevations cycling through -20/10/40 degrees)
    looking at the origin from ``radius``, LGM's field of view."""
    az = np.arange(views) * (360.0 / views)
    el = np.resize(np.asarray(REFINE_ELEVATIONS), views)
    return Cameras(orbit_cameras(el, az, radius).to(device), LGM_FOVY, size, size)


def _covered_uvs(mesh: Mesh, cameras: Cameras, index: int, device):
    """(pixel indices [P], UVs [P, 2]) of the pixels the mesh covers in camera ``index``."""
    v = mesh.vertices.to(device)
    f = mesh.faces.to(device)
    xy, depth = project(v, cameras, index)
    frag = rasterize(xy, depth, f, (cameras.height, cameras.width))
    hit = frag.mask.reshape(-1).nonzero().squeeze(1)
    tri = f[frag.face.reshape(-1)[hit]]
    lam = frag.bary.reshape(-1, 3)[hit] / depth[tri]
    lam = lam / lam.sum(-1, keepdim=True)
    return hit, (mesh.uvs.to(device)[tri] * lam[..., None]).sum(1)


def _back_project(texture: torch.Tensor, uv: torch.Tensor, rgb: torch.Tensor, min_weight: float = 0.05):
    """Texture [H, W, 3] whose texels are the bilinear-weighted mean of the colours ``rgb`` [P, 3]
    seen at ``uv`` [P, 2] (the least-squares fit when each texel is seen often); texels with less
    than ``min_weight`` total weight keep ``texture``'s value."""
    H, W = texture.shape[:2]
    x = uv[:, 0] * W - 0.5  # grid_sample(align_corners=False) texel coordinates
    y = (1.0 - uv[:, 1]) * H - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    num = torch.zeros(H * W, 3, device=uv.device)
    den = torch.zeros(H * W, device=uv.device)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0.long() + dx).clamp(0, W - 1)  # border padding, as the lookup
        yi = (y0.long() + dy).clamp(0, H - 1)
        idx = yi * W + xi
        num.index_add_(0, idx, w[:, None] * rgb)
        den.index_add_(0, idx, w)
    seen = den > min_weight
    out = texture.reshape(-1, 3).clone()
    out[seen] = num[seen] / den[seen, None]
    return out.view(H, W, 3)


def refine_texture(mesh: Mesh, gaussians: Gaussians, *, steps: int = 0, cameras: Optional[Cameras] = None,
                   lr: float = 0.01, device=None) -> Mesh:
    """A copy of the textured ``mesh`` whose texture is fitted to renders of ``gaussians`` (batch of 1,
    same frame) from ``cameras`` (default :func:`refinement_cameras`): every covered pixel's colour is
    back-projected into the texels its lookup reads (bilinear weights; one pass, the least-squares
    fit where views agree), then ``steps`` Adam steps on the exact L2 loss (costly on a CPU for a
    1024² texture: ~0.5 s a step)."""
    from ..render import render

    if mesh.texture is None or mesh.uvs is None:
        raise ValueError("refine_texture needs a textured mesh (uvs and texture)")
    dev = torch.device(device) if device is not None else gaussians.device
    cams = cameras if cameras is not None else refinement_cameras(device=dev)
    target = render(gaussians.to(dev), cams).image[0].reshape(len(cams), -1, 3)
    pix_uv, pix_rgb = [], []
    for i in range(len(cams)):
        hit, uv = _covered_uvs(mesh, cams, i, dev)
        pix_uv.append(uv)
        pix_rgb.append(target[i, hit])
    uv = torch.cat(pix_uv)
    want = torch.cat(pix_rgb)
    if uv.numel() == 0:
        return mesh
    texture = _back_project(mesh.texture.to(dev).float(), uv, want)
    if steps > 0:
        grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], -1)[None, None]
        tex = texture.permute(2, 0, 1)[None].clone().requires_grad_(True)
        opt = torch.optim.Adam([tex], lr=lr)
        for _ in range(int(steps)):
            got = torch.nn.functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border",
                                                  align_corners=False)[0, :, 0].T
            loss = (got - want).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                tex.clamp_(0, 1)
        texture = tex.detach()[0].permute(1, 2, 0)
    return Mesh(mesh.vertices, mesh.faces, uvs=mesh.uvs, texture=texture.contiguous().cpu(),
                vertex_colors=mesh.vertex_colors, normals=mesh.normals)
