"""Geometry used by the data types, renderers, mesher and file formats, written once.

Plain tensor functions, no state, no I/O (conventions in ``docs/conventions.md``):

* **Quaternions** are ``wxyz`` (real part first), composed with the Hamilton product.
* **Covariances** are Σ = R·diag(s·m)²·Rᵀ from linear standard deviations ``s`` and a scale
  modifier ``m``. ``normalized=False`` builds R from the raw (not unit-length) quaternion, which is
  what the original rasterizer does for legacy pre-"fixrot" checkpoints.
* **Poses** are OpenGL camera-to-world matrices (camera looks down -z, +y up); **view matrices**
  are OpenCV world-to-camera (camera looks down +z, +y down), what rasterizers want.
* **Intrinsics** are pinholes ``K = [[fx, 0, W/2], [0, fy, H/2], [0, 0, 1]]`` from a vertical field
  of view in degrees; pixel ``(i, j)`` covers ``[i, i+1)`` and is sampled at its centre ``i + ½``.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

__all__ = [
    "quaternion_multiply", "quaternion_to_matrix", "matrix_to_quaternion",
    "covariance_3d", "inverse_covariance_3d",
    "focal_length", "focal_lengths", "intrinsics",
    "opengl_to_opencv", "world_to_camera", "pixel_coordinates",
]


# ---------------------------------------------------------------------- quaternions
def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions [..., 4], broadcasting over leading axes."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def quaternion_to_matrix(q: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """wxyz quaternions [..., 4] -> rotation matrices [..., 3, 3].

    With ``normalize=False`` the raw components go into the formula as they are, which is what
    LGM's rasterizer does (legacy checkpoints, docs/conventions.md#legacy-rotations).
    """
    if normalize:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """A 3x3 rotation matrix -> a unit wxyz quaternion [4] (float32) with w >= 0 (Shepperd's method)."""
    R = R.double()
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    candidates = torch.stack([tr, R[0, 0], R[1, 1], R[2, 2]])
    i = int(torch.argmax(candidates))
    if i == 0:
        s = torch.sqrt(1.0 + tr) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif i == 1:
        s = torch.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif i == 2:
        s = torch.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = torch.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = torch.stack(q)
    if q[0] < 0:
        q = -q
    return (q / q.norm()).float()


# ---------------------------------------------------------------------- covariances
def covariance_3d(
    scales: torch.Tensor, rotations: torch.Tensor, *, normalized: bool = True, scale_modifier: float = 1.0
) -> torch.Tensor:
    """World-space covariances [..., 3, 3] = R·diag(s·m)²·Rᵀ (float32) from linear scales [..., 3]
    and wxyz quaternions [..., 4]; ``normalized=False`` keeps the raw quaternion (legacy)."""
    R = quaternion_to_matrix(rotations.float(), normalize=normalized)
    M = R * (scales.float() * float(scale_modifier)).unsqueeze(-2)  # R @ diag(s m)
    return M @ M.transpose(-1, -2)


def inverse_covariance_3d(
    scales: torch.Tensor, rotations: torch.Tensor, *, normalized: bool = True, min_scale: float = 1e-4
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Σ⁻¹ [N, 3, 3], largest standard deviation [N]) of N Gaussians (scales [N, 3], wxyz [N, 4]).

    Scales are taken as ``|s|`` clamped to ``min_scale`` so flat Gaussians stay invertible. Unit
    quaternions (``normalized``) give Σ⁻¹ = R·diag(1/s²)·Rᵀ directly; raw legacy quaternions make R
    a rotation times a scale, so Σ = R·diag(s)²·Rᵀ + min_scale²·I is built and inverted.
    """
    q = rotations.float()
    s = scales.float().abs().clamp_min(min_scale)
    R = quaternion_to_matrix(q, normalize=normalized)
    if normalized:
        inv = R @ torch.diag_embed(1.0 / (s * s)) @ R.transpose(-1, -2)
        return inv, s.amax(dim=-1)
    cov = covariance_3d(s, q, normalized=False)
    cov = cov + torch.eye(3, device=cov.device) * (min_scale * min_scale)
    return torch.linalg.inv(cov), torch.linalg.eigvalsh(cov)[:, -1].clamp_min(0).sqrt()


# ---------------------------------------------------------------------- cameras
def focal_length(size: int, fovy_deg: float) -> float:
    """Focal length in pixels for an image of ``size`` rows and vertical fov ``fovy_deg`` degrees."""
    return size * 0.5 / math.tan(0.5 * math.radians(fovy_deg))


def focal_lengths(width: int, height: int, fovy_deg: float) -> Tuple[float, float]:
    """(fx, fy) in pixels of a ``width`` x ``height`` image with vertical fov ``fovy_deg``. Pixels are
    square, so the horizontal fov follows from the aspect ratio and fx = fy = f(height)."""
    f = focal_length(height, fovy_deg)
    return (f, f)


def intrinsics(width: int, height: int, fovy_deg: float, views: int = 1, device=None) -> torch.Tensor:
    """Pinhole K [views, 3, 3] float32, principal point at the image centre (W/2, H/2)."""
    fx, fy = focal_lengths(width, height, fovy_deg)
    K = torch.tensor([[fx, 0.0, width * 0.5], [0.0, fy, height * 0.5], [0.0, 0.0, 1.0]],
                     dtype=torch.float32, device=device)
    return K.expand(views, 3, 3).clone()


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Flip a camera-to-world pose's camera y and z axes: OpenGL (looks -z, y up) <-> OpenCV
    (looks +z, y down). The operation is its own inverse."""
    out = c2w.clone()
    out[..., :3, 1:3] = -out[..., :3, 1:3]
    return out


def world_to_camera(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL camera-to-world poses [..., 4, 4] -> OpenCV world-to-camera view matrices [..., 4, 4],
    same dtype and device, by the rigid inverse (Rᵀ, -Rᵀt; no general matrix inverse)."""
    R = c2w[..., :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=c2w.device, dtype=c2w.dtype)
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(c2w)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ c2w[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def pixel_coordinates(points_cam: torch.Tensor, Ks: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Pinhole projection: OpenCV camera-space points [..., 3] -> pixel coordinates [..., 2]
    (pixel-centre convention), ``(fx·x/d + cx, fy·y/d + cy)``. ``Ks`` [..., 3, 3] broadcasts against
    the points' leading axes; ``depth`` [...] is the divisor the caller made safe (e.g. z with culled
    points replaced by 1)."""
    x, y = points_cam[..., 0], points_cam[..., 1]
    return torch.stack([Ks[..., 0, 0] * x / depth + Ks[..., 0, 2], Ks[..., 1, 1] * y / depth + Ks[..., 1, 2]], dim=-1)
