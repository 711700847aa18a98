"""Splat rendering: :func:`render` draws a batch of :class:`~lgm_core.gaussians.Gaussians` from a set of
:class:`~lgm_core.cameras.Cameras` with the original LGM rasterizer's semantics (lgm_spec §6.3).

Backends (same output contract):

* ``"gsplat"`` — gsplat on CUDA (optional dependency; its extension compiles on first use). If it is
  missing or fails, one warning line is logged and the PyTorch renderer is used instead.
* ``"torch"`` — :mod:`lgm_core.render.torch_backend`, pure PyTorch, any device, bounded memory.
* ``"auto"`` (default) — gsplat when the Gaussians are on CUDA and gsplat works, else torch.
  The environment variable ``LGM_RENDER_BACKEND=torch|gsplat|auto`` overrides the choice made
  by ``"auto"`` (an explicit ``backend=`` argument wins over it).

Output (:class:`RenderResult`, float32, on the Gaussians' device), B batch items × V cameras:

* ``image`` [B,V,H,W,3]: Σ cᵢαᵢTᵢ + T·background, clamped to [0, 1]; colours are the Gaussians'
  SH DC colours (``Gaussians.rgb``) passed directly (higher SH bands are ignored).
* ``alpha`` [B,V,H,W,1]: accumulated opacity Σ αᵢTᵢ in [0, 1].
* ``depth`` [B,V,H,W,1]: **expected** camera-space depth Σ zᵢαᵢTᵢ / alpha (world units along the
  viewing axis; 0 where alpha is 0). The original's unnormalised depth is ``depth * alpha``.

Row 0 of an image is its top; column 0 its left (the camera's +x is to the right, +y up).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..cameras import Cameras
from ..gaussians import Gaussians
from . import gsplat_backend, torch_backend
from .common import BackgroundLike, background_tensor, camera_matrices, prepare_gaussians, project, psnr

__all__ = ["RenderResult", "render", "resolve_backend", "psnr", "BACKENDS"]

log = logging.getLogger("lgm_core.render")

BACKENDS = ("auto", "torch", "gsplat")
ENV_VAR = "LGM_RENDER_BACKEND"


@dataclass
class RenderResult:
    """Renders of B batch items from V cameras (float32). See the module docstring for the
    meaning of each field. ``backend`` names the backend that produced them."""

    image: torch.Tensor  # [B,V,H,W,3] in [0,1]
    alpha: torch.Tensor  # [B,V,H,W,1] in [0,1]
    depth: torch.Tensor  # [B,V,H,W,1] expected camera-space z, 0 where alpha == 0
    backend: str = "torch"

    def cpu(self) -> "RenderResult":
        return RenderResult(self.image.cpu(), self.alpha.cpu(), self.depth.cpu(), self.backend)


def resolve_backend(backend: str, device) -> str:
    """The backend that :func:`render` will use for ``backend`` on ``device`` ("torch" or "gsplat")."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env not in BACKENDS:
            log.warning("ignoring %s=%r (expected one of %s)", ENV_VAR, env, ", ".join(BACKENDS))
        elif env:
            backend = env
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "gsplat" and device.type != "cuda":
        if not getattr(resolve_backend, "_warned_cpu", False):
            log.warning("gsplat needs CUDA tensors (got %s); using the PyTorch renderer", device)
            resolve_backend._warned_cpu = True
        return "torch"
    if device.type == "cuda" and gsplat_backend.available(device):
        return "gsplat"
    return "torch"


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    *,
    background: BackgroundLike = (1.0, 1.0, 1.0),
    scale_modifier: float = 1.0,
    backend: str = "auto",
    views_per_chunk: Optional[int] = None,
) -> RenderResult:
    """Render every batch item of ``gaussians`` from every camera of ``cameras``.

    ``background``: RGB in [0, 1] (a 3-sequence, or a tensor broadcastable to [B,V,3]); white by
    default. ``scale_modifier`` multiplies every scale before the covariance is built.
    ``views_per_chunk`` bounds how many cameras are rasterised at once (default: chosen from N so
    that per-chunk buffers stay bounded). Rendering runs on the Gaussians' device, in float32.
    """
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"gaussians must be a Gaussians instance, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be a Cameras instance, got {type(cameras).__name__}")
    if not float(scale_modifier) > 0:
        raise ValueError(f"scale_modifier must be positive, got {scale_modifier}")
    device = gaussians.device
    B, N = gaussians.batch_size, gaussians.num_gaussians
    V, H, W = len(cameras), int(cameras.height), int(cameras.width)
    bg = background_tensor(background, B, V, device)
    chosen = resolve_backend(backend, device)
    inputs = prepare_gaussians(gaussians, scale_modifier)
    viewmats, Ks = camera_matrices(cameras, device)
    if views_per_chunk is None:
        budget = 2**20 if device.type == "cpu" else 2**23
        views_per_chunk = max(1, budget // max(N, 1))
    views_per_chunk = max(1, int(views_per_chunk))

    image = torch.empty(B, V, H, W, 3, dtype=torch.float32, device=device)
    alpha = torch.empty(B, V, H, W, 1, dtype=torch.float32, device=device)
    depth = torch.empty(B, V, H, W, 1, dtype=torch.float32, device=device)
    for b in range(B):
        for v0 in range(0, V, views_per_chunk):
            sl = slice(v0, min(V, v0 + views_per_chunk))
            out = None
            if chosen == "gsplat":
                try:
                    out = _gsplat_views(gaussians, inputs, b, viewmats[sl], Ks[sl], W, H, cameras.near,
                                        scale_modifier)
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # a kernel failure at render time: fall back for good
                    gsplat_backend.mark_failed(exc)
                    chosen = "torch"
            if out is None:
                out = _torch_views(inputs, b, viewmats[sl], Ks[sl], W, H, cameras.near)
            col, acc, dep = out
            image[b, sl] = (col + (1.0 - acc) * bg[b, sl, None, None, :]).clamp_(0.0, 1.0)
            alpha[b, sl] = acc.clamp(0.0, 1.0)
            depth[b, sl] = dep
    return RenderResult(image=image, alpha=alpha, depth=depth, backend=chosen)


def _torch_views(inputs, b, viewmats, Ks, W, H, near):
    proj = project(inputs.means[b], inputs.covs[b], viewmats, Ks, W, H, near=near)
    feats = torch.cat([inputs.colors[b][None].expand(viewmats.shape[0], -1, -1), proj.depths[..., None]], dim=-1)
    acc, alpha = torch_backend.rasterize(
        proj.means2d, proj.conics, proj.depths, proj.radii, inputs.opacities[b], feats, W, H
    )
    depth = acc[..., 3:4] / alpha.clamp(min=1e-10)
    return acc[..., :3], alpha, depth


def _gsplat_views(gaussians, inputs, b, viewmats, Ks, W, H, near, scale_modifier):
    if gaussians.normalized_rotations:
        kwargs = dict(quats=gaussians.rotations[b].float(), scales=gaussians.scales[b].float() * float(scale_modifier))
    else:  # legacy: gsplat would normalise the quaternion, so hand it the raw-formula covariance
        kwargs = dict(covars=inputs.covs[b])
    return gsplat_backend.rasterize_views(
        inputs.means[b], inputs.opacities[b], inputs.colors[b], viewmats, Ks, W, H, near=near, **kwargs
    )
