"""Cameras, orbit poses and Plücker ray maps.

Conventions used throughout this package
----------------------------------------
* Poses are **camera-to-world** 4x4 matrices in the **OpenGL** camera convention: the camera looks
  down its local -z axis, +y is up, +x is right. Columns 0..2 of the rotation are the camera's
  right, up and back axes in world coordinates; column 3 is its position.
* World frame = the LGM frame: +y up, the object's front faces +z (see :mod:`lgm_core.gaussians`).
* **Elevation: positive = camera above the object** (degrees). Azimuth 0 sits on +z, azimuth 90 on
  +x (a right-handed turn about +y). The LGM/kiui code base uses the opposite elevation sign
  (kiui: negative = above), so ``orbit_camera(e, a) == kiui.cam.orbit_camera(-e, a)``.
* Field of view is vertical, in degrees. LGM's cameras use fovy 49.1 and radius 1.5.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .geometry import focal_length, focal_lengths, intrinsics, world_to_camera

LGM_FOVY = 49.1
"""Vertical field of view (degrees) of LGM's training renders and default cameras."""
LGM_RADIUS = 1.5
"""Orbit radius of LGM's default input cameras."""
LGM_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
"""Azimuths of the 4 input views, in the order LGM expects them."""
NEAR_CULL = 0.2
"""Camera-space depth below which the original rasterizer culls Gaussians."""


def _safe_normalize_np(v: np.ndarray) -> np.ndarray:
    return v / np.sqrt(np.maximum(np.sum(v * v, axis=-1, keepdims=True), 1e-20))


def orbit_camera(
    elevation: float,
    azimuth: float,
    radius: float = 1.0,
    target: Optional[Sequence[float]] = None,
) -> torch.Tensor:
    """Camera-to-world pose [4, 4] (float32, OpenGL) of a camera orbiting ``target`` (default origin)
    and looking at it.

    ``elevation`` in degrees, **positive = above** the object; ``azimuth`` in degrees, 0 on +z,
    90 on +x. Equals kiui's ``orbit_camera(-elevation, azimuth, radius)`` (computed in float64,
    rounded to float32, like kiui). At the poles (|elevation| = 90) the camera's right axis is
    taken as the one it has at that azimuth on the equator instead of being undefined.
    """
    if not (math.isfinite(float(elevation)) and math.isfinite(float(azimuth))):
        raise ValueError(f"camera angles must be finite, got elevation {elevation}, azimuth {azimuth}")
    if not (math.isfinite(float(radius)) and float(radius) > 0):
        raise ValueError(f"camera radius must be a positive distance, got {radius}")
    el = np.deg2rad(float(elevation))
    az = np.deg2rad(float(azimuth))
    target_np = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    campos = np.array([
        radius * np.cos(el) * np.sin(az),
        radius * np.sin(el),  # kiui: -r sin(el) with its "negative = above" sign
        radius * np.cos(el) * np.cos(az),
    ]) + target_np
    forward = _safe_normalize_np(campos - target_np)
    right = np.cross(np.array([0.0, 1.0, 0.0]), forward)
    if np.linalg.norm(right) < 1e-9:  # looking straight up/down
        right = np.array([np.cos(az), 0.0, -np.sin(az)])
    right = _safe_normalize_np(right)
    up = _safe_normalize_np(np.cross(forward, right))
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3] = np.stack([right, up, forward], axis=1)
    pose[:3, 3] = campos
    return torch.from_numpy(pose)


def orbit_cameras(elevations, azimuths, radius: float = 1.0) -> torch.Tensor:
    """Stack of :func:`orbit_camera` poses [V, 4, 4]; scalars broadcast against sequences."""
    el = np.atleast_1d(np.asarray(elevations, dtype=np.float64))
    az = np.atleast_1d(np.asarray(azimuths, dtype=np.float64))
    el, az = np.broadcast_arrays(el, az)
    return torch.stack([orbit_camera(e, a, radius) for e, a in zip(el.tolist(), az.tolist())])


def default_input_cameras(elevation: float = 0.0, radius: float = LGM_RADIUS) -> torch.Tensor:
    """The 4 cameras LGM expects its input views from: [4, 4, 4] camera-to-world (OpenGL).

    View order: azimuth 0 (front view, camera on +z), 90 (camera on +x), 180 (back view, camera
    on -z), 270 (camera on -x): each next view is the object turned 90 degrees further.
    ``elevation`` positive = cameras above the object. At elevation 0 these equal the
    original's ``cam_poses`` exactly.
    """
    return orbit_cameras(elevation, list(LGM_AZIMUTHS), radius)


def plucker_rays(c2w: torch.Tensor, size: int = 256, fovy_deg: float = LGM_FOVY) -> torch.Tensor:
    """Plücker ray embedding [V, 6, size, size] (float32) of square images seen by ``c2w`` [V, 4, 4].

    Per pixel (row 0 = top): channels 0-2 are the moment o x d, channels 3-5 the unit direction d
    (world frame), with rays through pixel centres, as LGM computes them (docs/conventions.md#rays).
    """
    if c2w.dim() == 2:
        c2w = c2w[None]
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be [V, 4, 4], got {list(c2w.shape)}")
    c2w = c2w.detach().to("cpu", torch.float32)
    h = w = int(size)
    x, y = torch.meshgrid(torch.arange(w), torch.arange(h), indexing="xy")
    x, y = x.flatten(), y.flatten()
    cx, cy = w * 0.5, h * 0.5
    focal = focal_length(h, fovy_deg)
    dirs_cam = torch.stack([(x - cx + 0.5) / focal, (y - cy + 0.5) / focal * -1.0], dim=-1)
    dirs_cam = torch.nn.functional.pad(dirs_cam, (0, 1), value=-1.0)  # [hw, 3], looking down -z
    out = []
    for pose in c2w:
        d = dirs_cam @ pose[:3, :3].transpose(0, 1)
        d = d / torch.sqrt(torch.clamp(torch.sum(d * d, -1, keepdim=True), min=1e-20))
        o = pose[:3, 3].unsqueeze(0).expand_as(d)
        plucker = torch.cat([torch.cross(o, d, dim=-1), d], dim=-1).view(h, w, 6)
        out.append(plucker.permute(2, 0, 1))
    return torch.stack(out).contiguous()


def plucker_rays_batched(c2w: torch.Tensor, size: int = 256, fovy_deg: float = LGM_FOVY) -> torch.Tensor:
    """:func:`plucker_rays` for any batch of poses ``c2w`` [..., 4, 4], computed on their device
    (e.g. jittered training poses on the GPU, no host round trip): [..., 6, size, size] float32,
    same conventions; equal to :func:`plucker_rays` up to float32 rounding of the matrix product."""
    if c2w.shape[-2:] != (4, 4):
        raise ValueError(f"c2w must be [..., 4, 4], got {list(c2w.shape)}")
    batch = c2w.shape[:-2]
    poses = c2w.reshape(-1, 4, 4).float()
    h = w = int(size)
    focal = focal_length(h, fovy_deg)
    ar = torch.arange(w, device=poses.device, dtype=torch.float32)
    y, x = torch.meshgrid(ar, ar, indexing="ij")
    dirs_cam = torch.stack([(x.flatten() - w * 0.5 + 0.5) / focal, (y.flatten() - h * 0.5 + 0.5) / focal * -1.0,
                            torch.full((h * w,), -1.0, device=poses.device)], dim=-1)  # [hw, 3]
    d = dirs_cam[None] @ poses[:, :3, :3].transpose(1, 2)  # [V, hw, 3]
    d = d / torch.sqrt(torch.clamp(torch.sum(d * d, -1, keepdim=True), min=1e-20))
    o = poses[:, None, :3, 3].expand_as(d)
    plucker = torch.cat([torch.cross(o, d, dim=-1), d], dim=-1)  # [V, hw, 6]
    return plucker.transpose(1, 2).reshape(*batch, 6, h, w).contiguous()


@dataclass
class Cameras:
    """A set of V pinhole cameras sharing one image size and vertical field of view.

    ``c2w``: [V, 4, 4] float32 camera-to-world poses, OpenGL convention (see module docstring).
    ``fovy``: vertical field of view in degrees (fovx follows from the aspect ratio).
    ``width``/``height``: image size in pixels. ``near``: Gaussians closer than this camera-space
    depth are culled (0.2, as the original rasterizer).
    """

    c2w: torch.Tensor
    fovy: float = LGM_FOVY
    width: int = 512
    height: int = 512
    near: float = NEAR_CULL

    def __post_init__(self) -> None:
        if self.c2w.dim() == 2:
            self.c2w = self.c2w[None]
        if self.c2w.dim() != 3 or self.c2w.shape[-2:] != (4, 4):
            raise ValueError(f"c2w must be [V, 4, 4], got {list(self.c2w.shape)}")
        if not (0.0 < float(self.fovy) < 180.0):
            raise ValueError(f"fovy must be in (0, 180) degrees, got {self.fovy}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (math.isfinite(float(self.near)) and float(self.near) >= 0):
            raise ValueError(f"near must be a non-negative distance, got {self.near}")
        if self.c2w.device.type == "cpu" and not bool(torch.isfinite(self.c2w).all()):
            raise ValueError("camera poses (c2w) contain NaN/Inf values")  # (device poses: checked on use)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device=None) -> "Cameras":
        return dataclasses.replace(self, c2w=self.c2w.to(device))

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return dataclasses.replace(self, c2w=self.c2w[index])

    @property
    def focal(self) -> tuple:
        """(fx, fy) in pixels (square pixels: fx = fy)."""
        return focal_lengths(self.width, self.height, self.fovy)

    def intrinsics(self) -> torch.Tensor:
        """K [V, 3, 3] with principal point at the image centre (pixel centres at i + 0.5)."""
        return intrinsics(self.width, self.height, self.fovy, len(self), self.device)

    def world_to_camera_opencv(self) -> torch.Tensor:
        """World-to-camera [V, 4, 4] in the OpenCV convention (looks +z, y down), as gsplat wants."""
        return world_to_camera(self.c2w.float())

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres [V, 3] in world coordinates."""
        return self.c2w[:, :3, 3]

    @classmethod
    def orbit(
        cls,
        elevations: Union[float, Sequence[float]] = 0.0,
        azimuths: Union[float, Sequence[float]] = LGM_AZIMUTHS,
        radius: float = LGM_RADIUS,
        fovy: float = LGM_FOVY,
        size: Union[int, tuple] = 512,
    ) -> "Cameras":
        """Cameras on a sphere around the origin; elevations/azimuths in degrees (positive
        elevation = above), broadcast against each other. ``size`` is an int or (width, height)."""
        width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return cls(orbit_cameras(elevations, azimuths, radius), float(fovy), width, height)

    @classmethod
    def turntable(
        cls,
        num_frames: int = 120,
        elevation: float = 0.0,
        radius: float = LGM_RADIUS,
        fovy: float = LGM_FOVY,
        size: Union[int, tuple] = 512,
        start_azimuth: float = 0.0,
    ) -> "Cameras":
        """``num_frames`` cameras evenly spaced over one full turn (azimuth start, start + 360/n, ...)."""
        if num_frames < 1:
            raise ValueError("num_frames must be at least 1")
        az = start_azimuth + np.arange(num_frames) * (360.0 / num_frames)
        return cls.orbit(elevation, az, radius, fovy, size)

    @classmethod
    def lgm_inputs(cls, elevation: float = 0.0, size: int = 256) -> "Cameras":
        """LGM's 4 default input cameras (azimuth 0/90/180/270, radius 1.5, fovy 49.1)."""
        return cls(default_input_cameras(elevation), LGM_FOVY, size, size)


def canonicalize_cameras(c2w: torch.Tensor, radius: float = LGM_RADIUS) -> torch.Tensor:
    """Re-express poses [V, 4, 4] relative to view 0 the way LGM's training did (docs/conventions.md#canonical-frame):
    every pose is left-multiplied by T @ inverse(pose_0), T a translation by (0, 0, radius), so
    view 0 becomes the default front camera at (0, 0, radius) and the others keep their pose
    relative to it. Use it for your own captured views before :meth:`LGM.reconstruct`."""
    c2w = torch.as_tensor(c2w, dtype=torch.float32)
    T = torch.eye(4, dtype=torch.float32)
    T[2, 3] = radius
    return (T @ torch.linalg.inv(c2w[0]))[None] @ c2w
