"""The original's two training augmentations of input views 1-3 (docs/conventions.md#training), with
explicit RNGs.

* :func:`grid_distortion`: a random separable piecewise-linear warp of each image (mimics the
  multi-view inconsistency of diffusion outputs). Images [V, C, H, W] in [0, 1], before ImageNet
  normalisation.
* :func:`orbit_camera_jitter`: rotate each camera (position and orientation) about the world origin
  by R(a_up)·R(a_right), a_up = the camera's own up axis x strength·π·U(−1, 1), a_right = its right
  axis x strength·π/2·U(−1, 1). Poses [V, 4, 4] camera-to-world, OpenGL convention.

Random numbers come from the ``generator`` passed in, drawn in the original's order, so a sample's
augmentation is reproducible from its seed (what makes resumed runs bit-for-bit).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _rand(n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float32)


def warp_coordinates(size: int, num_knots: int, strength: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One axis of the grid distortion: ``size`` normalised sample coordinates in [−1, 1].

    ``num_knots`` knots evenly spaced over [0, 1], each moved by strength·(U(0,1) − 0.5)/(K − 1),
    clamped to [0, 1], scaled to pixels and truncated, the first and last pinned to 0 and ``size``;
    between knots i and i+1 the coordinates run linearly (both ends included) from the i-th to the
    (i+1)-th of K evenly spaced values over [−1, 1]. Non-decreasing."""
    K = int(num_knots)
    knots = torch.linspace(0, 1, K)
    knots = (knots + strength * (_rand(K, generator) - 0.5) / (K - 1)).clamp(0, 1)
    knots = (knots * size).long()
    knots[0] = 0
    knots[-1] = size
    grid = torch.linspace(-1, 1, K)
    parts = [torch.linspace(float(grid[i]), float(grid[i + 1]), int(knots[i + 1] - knots[i])) for i in range(K - 1)]
    return torch.cat(parts)


def distortion_grids(num: int, height: int, width: int, strength: float = 0.5,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Sampling grids [num, H, W, 2] (x, y in [−1, 1]) for :func:`grid_distortion`: one knot count K
    uniform in 8..16 shared by all, then per image an x warp and a y warp."""
    K = int(torch.randint(8, 17, (1,), generator=generator))
    grids = []
    for _ in range(num):
        xs = warp_coordinates(width, K, strength, generator)
        ys = warp_coordinates(height, K, strength, generator)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")  # [H, W]
        grids.append(torch.stack([gx, gy], dim=-1))
    return torch.stack(grids)


def grid_distortion(images: torch.Tensor, strength: float = 0.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Warp images [V, C, H, W] with :func:`distortion_grids` (bilinear, align_corners False, zero
    padding), as the original does to input views 1-3."""
    V, _, H, W = images.shape
    grids = distortion_grids(V, H, W, strength, generator).to(images.device, images.dtype)
    return F.grid_sample(images, grids, mode="bilinear", padding_mode="zeros", align_corners=False)


def rotvec_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors [..., 3] (axis x angle in radians) -> rotation matrices [..., 3, 3] (Rodrigues)."""
    angle = rotvec.norm(dim=-1, keepdim=True)
    axis = rotvec / angle.clamp(min=1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    Kx = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    s = torch.sin(angle)[..., None]
    c = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(Kx)
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def orbit_camera_jitter(poses: torch.Tensor, strength: float = 0.1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Jitter orbit cameras [V, 4, 4] (OpenGL c2w): per camera, rotate the pose about the world origin by
    R(up · strength·π·u1) @ R(right · strength·π/2·u2), u1, u2 ~ U(−1, 1) (≤ ±18° and ±9° at 0.1)."""
    V = poses.shape[0]
    u_up = _rand(V, generator)[:, None] * 2 - 1
    u_right = _rand(V, generator)[:, None] * 2 - 1
    p = poses.float()
    rot_up = rotvec_to_matrix(p[:, :3, 1] * (strength * math.pi) * u_up)
    rot_right = rotvec_to_matrix(p[:, :3, 0] * (strength * math.pi / 2) * u_right)
    rot = rot_up @ rot_right
    out = p.clone()
    out[:, :3, :3] = rot @ p[:, :3, :3]
    out[:, :3, 3:] = rot @ p[:, :3, 3:]
    return out
