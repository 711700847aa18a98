"""The render backend contract and the stages every backend shares (docs/conventions.md#rendering).

Every backend (``torch_backend``, ``autograd_backend``, ``gsplat_backend``) implements one function::

    render_views(inputs: SplatInputs, item: int, viewmats, Ks, width, height, *, near, backgrounds)
        -> ViewRenders(colour [C,H,W,3] over the background (not clamped), alpha [C,H,W,1],
                       expected depth [C,H,W,1] or None)

for batch item ``item`` of the prepared Gaussians and C cameras. The inputs are built once by
:func:`prepare_gaussians` (the one preparation step) and the cameras by :func:`camera_matrices`.
The PyTorch backends run the stages below (:func:`render_projected`: :func:`project`, then their
``rasterize``); gsplat runs its own fused kernels for the same stages, and the tests compare the
backends stage by stage.

Conventions:

* Renderers work with **OpenCV world-to-camera** matrices (camera looks down +z, image rows go down,
  +y down) and a pinhole ``K = [[fx, 0, W/2], [0, fy, H/2], [0, 0, 1]]``; pixel ``(i, j)`` is sampled
  at its centre ``(i + 0.5, j + 0.5)`` — the same as the original rasterizer's ``u = fx·x/z + W/2 -
  0.5`` evaluated at integer ``i`` (:mod:`lgm_core.geometry`).
* Depth is the camera-space z (distance along the viewing axis, world units), not the ray length.
* Covariance Σ = R·diag(s·m)²·Rᵀ. With ``Gaussians.normalized_rotations`` True the quaternion is
  normalised first (a no-op for LGM "fixrot" output, and what gsplat and viewers do); legacy
  checkpoints (False) use the raw, un-normalised quaternion in the rotation formula, as the
  original rasterizer does.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..cameras import Cameras
from ..gaussians import SH_C0, Gaussians
from ..geometry import covariance_3d, intrinsics, pixel_coordinates, world_to_camera

ALPHA_MIN = 1.0 / 255.0
"""Per-Gaussian α below this is skipped (original rasterizer and gsplat)."""
ALPHA_MAX = 0.99
"""α is clamped to this (original rasterizer; gsplat's kernel uses 0.999)."""
T_MIN = 1e-4
"""A pixel stops compositing when its transmittance would fall below this."""
EPS2D = 0.3
"""Low-pass filter added to both diagonal entries of every 2-D covariance (pixels²)."""
FRUSTUM_SLACK = 1.3
"""x/z and y/z are clamped to ±1.3·tan(half fov) in the EWA Jacobian."""


@dataclass
class SplatInputs:
    """Float32 per-Gaussian tensors, the one input every backend takes (B batch items, N Gaussians).

    ``means`` [B,N,3] world; ``quats`` [B,N,4] wxyz as stored; ``scales`` [B,N,3] linear std-devs with
    the scale modifier applied; ``opacities`` [B,N] with padding (``counts``) zeroed; ``colors``
    [B,N,3] = rgb from the SH DC term (not clamped: colours go to the compositor directly, as the
    original does); ``normalized``: False for legacy raw quaternions. :attr:`covs` [B,N,3,3] (the
    world-space covariances) is computed on first use.
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    normalized: bool = True

    @functools.cached_property
    def covs(self) -> torch.Tensor:
        return covariance_3d(self.scales, self.quats, normalized=self.normalized)


@dataclass
class ViewRenders:
    """What a backend's ``render_views`` returns for C cameras (float32): ``image`` [C,H,W,3] colour
    composited over the background, not clamped; ``alpha`` [C,H,W,1] = Σ αᵢTᵢ; ``depth`` [C,H,W,1]
    expected camera-space z (0 where alpha is 0), or None when it was not asked for."""

    image: torch.Tensor
    alpha: torch.Tensor
    depth: Optional[torch.Tensor]


def prepare_gaussians(gaussians: Gaussians, scale_modifier: float = 1.0) -> SplatInputs:
    """Turn a :class:`Gaussians` batch into :class:`SplatInputs` (fp32, padding made invisible,
    colours from the SH DC term computed in float32)."""
    g = gaussians
    opac = g.opacities[..., 0].float()
    if g.counts is not None:
        opac = opac * g.valid_mask().to(opac.dtype)
    return SplatInputs(
        means=g.positions.float(),
        quats=g.rotations.float(),
        scales=g.scales.float() * float(scale_modifier),
        opacities=opac,
        colors=g.sh[:, :, 0, :].float() * SH_C0 + 0.5,
        normalized=g.normalized_rotations,
    )


def camera_matrices(cameras: Cameras, device, background=None, batch: int = 1) -> tuple:
    """(viewmats [V,4,4] OpenCV world-to-camera, Ks [V,3,3]) as float32 on ``device``; with
    ``background`` also the [batch, V, 3] background (see :func:`background_tensor`).

    Built on the host in float64 (rigid inverse, :func:`lgm_core.geometry.world_to_camera`) and moved
    in one transfer, so no device-side matrix inverse and no extra synchronisation is needed.
    """
    c2w = cameras.c2w.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(c2w).all()):
        raise ValueError("camera poses (c2w) contain NaN/Inf values")
    V = c2w.shape[0]
    view = world_to_camera(c2w).numpy()
    K = intrinsics(cameras.width, cameras.height, cameras.fovy).numpy()
    parts = [view.reshape(V, 16), np.broadcast_to(K.reshape(1, 9), (V, 9))]
    if background is not None:
        bg = _background_np(background, batch, V)
        parts.append(bg.transpose(1, 0, 2).reshape(V, batch * 3))
    packed = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32)).to(device, non_blocking=True)
    out = (packed[:, :16].reshape(V, 4, 4), packed[:, 16:25].reshape(V, 3, 3))
    if background is not None:
        out += (packed[:, 25:].reshape(V, batch, 3).transpose(0, 1),)
    return out


def _background_np(background, batch: int, views: int) -> np.ndarray:
    if isinstance(background, torch.Tensor):
        background = background.detach().to("cpu", torch.float64).numpy()
    bg = np.asarray(background, dtype=np.float64)
    if bg.ndim == 0:
        bg = np.broadcast_to(bg, (3,))
    if bg.shape[-1] != 3:
        raise ValueError(f"background must have 3 channels (RGB), got shape {list(bg.shape)}")
    if not np.isfinite(bg).all():
        raise ValueError("background colour must be finite (RGB in [0, 1]), got NaN/Inf")
    try:
        return np.broadcast_to(bg, (batch, views, 3))
    except ValueError as exc:
        raise ValueError(f"background of shape {list(bg.shape)} does not broadcast to [{batch}, {views}, 3]") from exc


def background_tensor(background, batch: int, views: int, device) -> torch.Tensor:
    """Background colour(s) -> [B, V, 3] float32 on ``device``: a 3-sequence, a scalar, or a tensor
    broadcastable to [B, V, 3] (values in [0, 1])."""
    bg = np.ascontiguousarray(_background_np(background, batch, views), dtype=np.float32)
    return torch.from_numpy(bg).to(device)


@dataclass
class Projected:
    """Per-camera screen-space Gaussians (C cameras, N Gaussians), the original's preprocess step.

    ``means2d`` [C,N,2] pixels (centre convention: pixel i covers [i, i+1)); ``conics`` [C,N,3]
    = (a, b, c) of the inverse 2-D covariance [[a, b], [b, c]]; ``depths`` [C,N] camera z;
    ``radii`` [C,N] int32 footprint radius ceil(3·sqrt(λmax)) in pixels, 0 = culled.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor


def project(
    means: torch.Tensor,
    covs: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.2,
    eps2d: float = EPS2D,
) -> Projected:
    """EWA-project N Gaussians (``means`` [N,3], ``covs`` [N,3,3]) into C cameras (``viewmats``
    [C,4,4] OpenCV world-to-camera, ``Ks`` [C,3,3]), exactly as the original's preprocess:
    cull z <= near, Jacobian with clamped x/z, y/z, +eps2d low-pass, det == 0 culled, radius from
    λmax = mid + sqrt(max(0.1, mid² - det)). Memory: O(C·N) floats."""
    R = viewmats[:, None, :3, :3]  # [C,1,3,3]
    t = viewmats[:, None, :3, 3]  # [C,1,3]
    p = (R @ means[None, :, :, None])[..., 0] + t  # [C,N,3]
    x, y, z = p.unbind(-1)
    fx = Ks[:, 0, 0, None]
    fy = Ks[:, 1, 1, None]
    in_front = z > near
    zs = torch.where(in_front, z, torch.ones_like(z))
    limx = FRUSTUM_SLACK * (0.5 * width / fx)
    limy = FRUSTUM_SLACK * (0.5 * height / fy)
    txz = torch.minimum(torch.maximum(x / zs, -limx), limx) * zs
    tyz = torch.minimum(torch.maximum(y / zs, -limy), limy) * zs
    # J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]; T = J W (rows j0, j1 of a 2x3 matrix)
    j00 = fx / zs
    j02 = -fx * txz / (zs * zs)
    j11 = fy / zs
    j12 = -fy * tyz / (zs * zs)
    Rw = viewmats[:, :3, :3]  # [C,3,3]
    row0 = j00[..., None] * Rw[:, None, 0, :] + j02[..., None] * Rw[:, None, 2, :]  # [C,N,3]
    row1 = j11[..., None] * Rw[:, None, 1, :] + j12[..., None] * Rw[:, None, 2, :]
    S = covs[None]  # [1,N,3,3]
    S_r0 = (S @ row0[..., None])[..., 0]  # [C,N,3]
    S_r1 = (S @ row1[..., None])[..., 0]
    a = (row0 * S_r0).sum(-1) + eps2d
    b = (row0 * S_r1).sum(-1)
    c = (row1 * S_r1).sum(-1) + eps2d
    det = a * c - b * b
    ok = in_front & (det != 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    inv_det = 1.0 / det_safe
    conics = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)
    mid = 0.5 * (a + c)
    lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
    radii = torch.ceil(3.0 * torch.sqrt(lam))
    radii = torch.where(ok, radii, torch.zeros_like(radii)).to(torch.int32)
    means2d = pixel_coordinates(p, Ks[:, None], zs)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def render_projected(rasterize, inputs: SplatInputs, item: int, viewmats: torch.Tensor, Ks: torch.Tensor,
                     width: int, height: int, *, near: float, backgrounds: torch.Tensor,
                     depth: bool = True) -> ViewRenders:
    """The PyTorch backends' ``render_views``: :func:`project` batch item ``item`` into the C cameras,
    composite with ``rasterize`` (``torch_backend.rasterize`` or ``autograd_backend.rasterize``; the
    camera depth rides along as an extra blended channel when ``depth``), then put the colour over
    ``backgrounds`` [C,3] and normalise the depth (expected depth, 0 where alpha is 0)."""
    proj = project(inputs.means[item], inputs.covs[item], viewmats, Ks, width, height, near=near)
    feats = inputs.colors[item][None].expand(viewmats.shape[0], -1, -1)
    if depth:
        feats = torch.cat([feats, proj.depths[..., None]], dim=-1)
    acc, alpha = rasterize(proj.means2d, proj.conics, proj.depths, proj.radii, inputs.opacities[item], feats,
                           width, height)
    image = torch.addcmul(acc[..., :3], 1.0 - alpha, backgrounds[:, None, None, :])
    return ViewRenders(image, alpha, acc[..., 3:4] / alpha.clamp(min=1e-10) if depth else None)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images with values in [0, 1] (inf when identical)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


BackgroundLike = Union[float, Sequence[float], torch.Tensor]
