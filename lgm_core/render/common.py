"""Shared pieces of the splat renderers: covariances, camera set-up and EWA projection.

Conventions (lgm_spec §6.2-6.3):

* Cameras arrive as :class:`lgm_core.cameras.Cameras` (OpenGL camera-to-world). Renderers work with
  **OpenCV world-to-camera** matrices (camera looks down +z, image rows go down, +y down) and a
  pinhole ``K = [[fx, 0, W/2], [0, fy, H/2], [0, 0, 1]]``; pixel ``(i, j)`` is sampled at its centre
  ``(i + 0.5, j + 0.5)`` — the same as the original rasterizer's ``u = fx·x/z + W/2 - 0.5`` evaluated
  at integer ``i``.
* Depth is the camera-space z (distance along the viewing axis, world units), not the ray length.
* Covariance Σ = R·diag(s·m)²·Rᵀ. With ``Gaussians.normalized_rotations`` True the quaternion is
  normalised first (a no-op for LGM "fixrot" output, and what gsplat and viewers do); legacy
  checkpoints (False) use the raw, un-normalised quaternion in the rotation formula, as the
  original rasterizer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from ..cameras import Cameras
from ..gaussians import Gaussians, quaternion_to_matrix

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
    """Float32 per-Gaussian tensors ready for a rasterizer (B batch items, N Gaussians each).

    ``means`` [B,N,3] world; ``covs`` [B,N,3,3] world-space covariance (scale modifier applied);
    ``opacities`` [B,N] with padding (``counts``) zeroed; ``colors`` [B,N,3] = rgb from the SH DC
    term (not clamped: colours are passed to the compositor directly, as the original does).
    """

    means: torch.Tensor
    covs: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor


def covariance_3d(
    scales: torch.Tensor, rotations: torch.Tensor, *, normalized: bool = True, scale_modifier: float = 1.0
) -> torch.Tensor:
    """World-space covariances [..., 3, 3] = R·diag(s·m)²·Rᵀ from linear scales [..., 3] and wxyz
    quaternions [..., 4]; ``normalized=False`` keeps the raw quaternion (legacy checkpoints)."""
    R = quaternion_to_matrix(rotations.float(), normalize=normalized)
    M = R * (scales.float() * float(scale_modifier)).unsqueeze(-2)  # R @ diag(s m)
    return M @ M.transpose(-1, -2)


def prepare_gaussians(gaussians: Gaussians, scale_modifier: float = 1.0) -> SplatInputs:
    """Turn a :class:`Gaussians` batch into :class:`SplatInputs` (fp32, padding made invisible)."""
    g = gaussians
    opac = g.opacities[..., 0].float()
    if g.counts is not None:
        opac = opac * g.valid_mask().to(opac.dtype)
    return SplatInputs(
        means=g.positions.float(),
        covs=covariance_3d(g.scales, g.rotations, normalized=g.normalized_rotations,
                           scale_modifier=scale_modifier),
        opacities=opac,
        colors=g.rgb.float(),
    )


def camera_matrices(cameras: Cameras, device, background=None, batch: int = 1) -> tuple:
    """(viewmats [V,4,4] OpenCV world-to-camera, Ks [V,3,3]) as float32 on ``device``; with
    ``background`` also the [batch, V, 3] background (see :func:`background_tensor`).

    Built on the host in float64 (rigid inverse: Rᵀ, -Rᵀt) and moved in one transfer, so no
    device-side matrix inverse and no extra synchronisation is needed.
    """
    c2w = cameras.c2w.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(c2w).all():
        raise ValueError("camera poses (c2w) contain NaN/Inf values")
    V = c2w.shape[0]
    R = c2w[:, :3, :3] * np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV camera axes (columns)
    Rt = R.transpose(0, 2, 1)
    view = np.zeros((V, 4, 4))
    view[:, :3, :3] = Rt
    view[:, :3, 3] = -np.einsum("vij,vj->vi", Rt, c2w[:, :3, 3])
    view[:, 3, 3] = 1.0
    fx, fy = cameras.focal
    K = np.array([[fx, 0.0, cameras.width * 0.5], [0.0, fy, cameras.height * 0.5], [0.0, 0.0, 1.0]])
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
    cx = Ks[:, 0, 2, None]
    cy = Ks[:, 1, 2, None]
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
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], dim=-1)
    return Projected(means2d=means2d, conics=conics, depths=z, radii=radii)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images with values in [0, 1] (inf when identical)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


BackgroundLike = Union[float, Sequence[float], torch.Tensor]
