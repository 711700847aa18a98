"""Splat rendering: :func:`render` draws a batch of :class:`~lgm_core.gaussians.Gaussians` from a set of
:class:`~lgm_core.cameras.Cameras` with the original LGM rasterizer's semantics
(docs/conventions.md#rasterizer-semantics).

Backends (one contract, :mod:`lgm_core.render.common`: the same prepared inputs, the same outputs;
:data:`BACKEND_MODULES` maps each name to its module's ``render_views``):

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

Gaussians with NaN/Inf values are rejected with :class:`~lgm_core.gaussians.InvalidGaussiansError`
before anything is drawn (docs/robustness.md); cameras and backgrounds must be finite too.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..cameras import Cameras
from ..gaussians import Gaussians, check_finite
from . import autograd_backend, gsplat_backend, torch_backend
from .common import BackgroundLike, SplatInputs, ViewRenders, camera_matrices, prepare_gaussians, psnr

__all__ = ["RenderResult", "render", "resolve_backend", "psnr", "BACKENDS", "BACKEND_MODULES", "SplatInputs",
           "ViewRenders", "prepare_gaussians", "camera_matrices"]

log = logging.getLogger("lgm_core.render")

BACKENDS = ("auto", "torch", "gsplat")
ENV_VAR = "LGM_RENDER_BACKEND"
BACKEND_MODULES = {"torch": torch_backend, "gsplat": gsplat_backend, "autograd": autograd_backend}
"""Every backend module implements ``render_views(inputs, item, viewmats, Ks, width, height, *, near,
backgrounds, depth=True) -> ViewRenders``. "autograd" is the differentiable PyTorch rasterizer
(training); :func:`render` picks "torch" or "gsplat"."""


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
        gsplat_backend.STATUS.warn_not_cuda(device)
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
    out_device=None,
) -> RenderResult:
    """Render every batch item of ``gaussians`` from every camera of ``cameras``.

    ``background``: RGB in [0, 1] (a 3-sequence, or a tensor broadcastable to [B,V,3]); white by
    default. ``scale_modifier`` multiplies every scale before the covariance is built.
    ``views_per_chunk`` bounds how many cameras are rasterised at once (default: chosen from N so
    that per-chunk buffers stay bounded). Rendering runs on the Gaussians' device, in float32;
    results land on ``out_device`` (default: that device). With CUDA Gaussians and
    ``out_device="cpu"`` the results go to pinned host memory, each chunk copied while the next
    one renders (much faster than ``.cpu()`` on a large result).
    """
    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"gaussians must be a Gaussians instance, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be a Cameras instance, got {type(cameras).__name__}")
    if not (math.isfinite(float(scale_modifier)) and float(scale_modifier) > 0):
        raise ValueError(f"scale_modifier must be a positive number, got {scale_modifier}")
    check_finite(gaussians, "render")  # the NaN policy (docs/robustness.md): never a NaN pixel
    device = gaussians.device
    out_dev = device if out_device is None else torch.device(out_device)
    B, N = gaussians.batch_size, gaussians.num_gaussians
    V, H, W = len(cameras), int(cameras.height), int(cameras.width)
    chosen = resolve_backend(backend, device)
    viewmats, Ks, bg = camera_matrices(cameras, device, background=background, batch=B)  # one transfer
    if views_per_chunk is None:
        budget = 2**20 if device.type == "cpu" else 2**23
        views_per_chunk = max(1, budget // max(N, 1))
    views_per_chunk = max(1, int(views_per_chunk))

    pin = out_dev.type == "cpu" and device.type == "cuda"
    image = torch.empty(B, V, H, W, 3, dtype=torch.float32, device=out_dev, pin_memory=pin)
    alpha = torch.empty(B, V, H, W, 1, dtype=torch.float32, device=out_dev, pin_memory=pin)
    depth = torch.empty(B, V, H, W, 1, dtype=torch.float32, device=out_dev, pin_memory=pin)
    inputs = prepare_gaussians(gaussians, scale_modifier)  # the one preparation step, every backend
    for b in range(B):
        for v0 in range(0, V, views_per_chunk):
            sl = slice(v0, min(V, v0 + views_per_chunk))
            out = None
            if chosen == "gsplat":
                try:
                    out = gsplat_backend.render_views(inputs, b, viewmats[sl], Ks[sl], W, H, near=cameras.near,
                                                      backgrounds=bg[b, sl])
                except torch.cuda.OutOfMemoryError:
                    raise
                except Exception as exc:  # a kernel failure at render time: fall back for good
                    gsplat_backend.mark_failed(exc)
                    chosen = "torch"
            if out is None:
                out = torch_backend.render_views(inputs, b, viewmats[sl], Ks[sl], W, H, near=cameras.near,
                                                 backgrounds=bg[b, sl])
            col, acc, dep = out.image, out.alpha, out.depth
            if out_dev == device:
                torch.clamp(col, 0.0, 1.0, out=image[b, sl])
                torch.clamp(acc, 0.0, 1.0, out=alpha[b, sl])
                depth[b, sl] = dep
            else:
                image[b, sl].copy_(col.clamp_(0.0, 1.0), non_blocking=pin)
                alpha[b, sl].copy_(acc.clamp_(0.0, 1.0), non_blocking=pin)
                depth[b, sl].copy_(dep, non_blocking=pin)
    if pin:
        torch.cuda.current_stream(device).synchronize()  # results are safe to read on return
    return RenderResult(image=image, alpha=alpha, depth=depth, backend=chosen)
