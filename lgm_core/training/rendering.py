"""Differentiable rendering of predicted Gaussians into per-sample supervision cameras.

Backends: gsplat on CUDA (its kernels have a backward), else the autograd rasterizer of
:mod:`lgm_core.render.autograd_backend` (any device; meant for small renders). Both follow the
original rasterizer's semantics (lgm_spec §6.3): OpenCV world-to-camera from the OpenGL poses,
K = [[f, 0, S/2], [0, f, S/2], [0, 0, 1]], near culling at 0.2, eps2d 0.3, colours passed
directly, white background; the image is clamped to [0, 1] as the original's training renders.
"""

from __future__ import annotations

import math

import torch

from ..cameras import NEAR_CULL
from ..render import gsplat_backend, resolve_backend
from ..render import autograd_backend
from ..render.common import covariance_3d, project

TRAIN_BACKENDS = ("auto", "gsplat", "torch")


def viewmats_from_c2w(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world [..., 4, 4] -> OpenCV world-to-camera [..., 4, 4] on the same device
    (rigid inverse, no host round trip)."""
    R = c2w[..., :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=c2w.device, dtype=c2w.dtype)
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ c2w[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def intrinsics(size: int, fovy: float, views: int, device) -> torch.Tensor:
    f = size * 0.5 / math.tan(0.5 * math.radians(fovy))
    K = torch.tensor([[f, 0.0, size * 0.5], [0.0, f, size * 0.5], [0.0, 0.0, 1.0]], device=device)
    return K.expand(views, 3, 3).contiguous()


def choose_backend(name: str, device) -> str:
    """"gsplat" or "torch" for training on ``device`` (``auto``: gsplat when CUDA and gsplat work)."""
    if name not in TRAIN_BACKENDS:
        raise ValueError(f"render backend must be one of {TRAIN_BACKENDS}, got {name!r}")
    return resolve_backend(name, device)


def render_views(gaussians: torch.Tensor, c2w: torch.Tensor, size: int, fovy: float, *,
                 backend: str = "torch", background: float = 1.0) -> tuple:
    """Render LGM's activated Gaussians ``gaussians`` [B, N, 14] (pos, opacity, scale, rot wxyz, rgb)
    into cameras ``c2w`` [B, V, 4, 4] (OpenGL, per sample) at ``size``² with vertical fov ``fovy``.

    Returns (image [B, V, 3, S, S] in [0, 1], alpha [B, V, 1, S, S]), float32, differentiable with
    respect to ``gaussians``. ``backend``: "gsplat" or "torch" (see :func:`choose_backend`).
    """
    with torch.autocast(device_type=gaussians.device.type, enabled=False):
        return _render_views(gaussians, c2w, size, fovy, backend, background)


def _render_views(gaussians, c2w, size, fovy, backend, background):
    B, V = c2w.shape[:2]
    g = gaussians.float()
    means, opac, scales, quats, rgb = g[..., 0:3], g[..., 3], g[..., 4:7], g[..., 7:11], g[..., 11:14]
    viewmats = viewmats_from_c2w(c2w.float())
    Ks = intrinsics(size, fovy, V, g.device)
    images, alphas = [], []
    for b in range(B):
        if backend == "gsplat":
            bg = torch.full((V, 3), float(background), device=g.device)
            col, acc, _ = gsplat_backend.rasterize_views(means[b], opac[b], rgb[b], viewmats[b], Ks, size, size,
                                                         near=NEAR_CULL, quats=quats[b], scales=scales[b],
                                                         backgrounds=bg)
        else:
            covs = covariance_3d(scales[b], quats[b], normalized=True)
            proj = project(means[b], covs, viewmats[b], Ks, size, size, near=NEAR_CULL)
            accum, acc = autograd_backend.rasterize(proj.means2d, proj.conics, proj.depths, proj.radii, opac[b],
                                                    rgb[b], size, size)
            col = accum + (1.0 - acc) * float(background)
        images.append(col.clamp(0.0, 1.0).permute(0, 3, 1, 2))
        alphas.append(acc.permute(0, 3, 1, 2))
    return torch.stack(images), torch.stack(alphas)
