"""Differentiable rendering of predicted Gaussians into per-sample supervision cameras.

Backends (the render contract of :mod:`lgm_core.render.common`): gsplat on CUDA (its kernels have
a backward), else the autograd rasterizer of :mod:`lgm_core.render.autograd_backend` (any device;
meant for small renders). Both follow the original rasterizer's semantics
(docs/conventions.md#rasterizer-semantics): OpenCV world-to-camera from the OpenGL poses,
K = [[f, 0, S/2], [0, f, S/2], [0, 0, 1]], near culling at 0.2, eps2d 0.3, colours passed
directly, white background; the image is clamped to [0, 1] as the original's training renders.
"""

from __future__ import annotations

import torch

from ..cameras import NEAR_CULL
from ..geometry import intrinsics, world_to_camera
from ..render import BACKEND_MODULES, SplatInputs, resolve_backend

TRAIN_BACKENDS = ("auto", "gsplat", "torch")


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
    inputs = SplatInputs(means=g[..., 0:3], quats=g[..., 7:11], scales=g[..., 4:7], opacities=g[..., 3],
                         colors=g[..., 11:14], normalized=True)
    viewmats = world_to_camera(c2w.float())
    Ks = intrinsics(size, size, fovy, V, g.device)
    bg = torch.full((V, 3), float(background), device=g.device)
    backend_module = BACKEND_MODULES["gsplat" if backend == "gsplat" else "autograd"]
    images, alphas = [], []
    for b in range(B):
        out = backend_module.render_views(inputs, b, viewmats[b], Ks, size, size, near=NEAR_CULL, backgrounds=bg,
                                          depth=False)
        images.append(out.image.clamp(0.0, 1.0).permute(0, 3, 1, 2))
        alphas.append(out.alpha.permute(0, 3, 1, 2))
    return torch.stack(images), torch.stack(alphas)
