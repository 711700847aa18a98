"""lgm_core.geometry: the one implementation of quaternions, covariances, intrinsics and projection."""

from __future__ import annotations

import math

import torch

from lgm_core.cameras import orbit_cameras
from lgm_core.geometry import (covariance_3d, focal_length, focal_lengths, intrinsics, inverse_covariance_3d,
                               matrix_to_quaternion, opengl_to_opencv, pixel_coordinates, quaternion_multiply,
                               quaternion_to_matrix, world_to_camera)


def _unit_quats(n: int, seed: int = 0) -> torch.Tensor:
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return q / q.norm(dim=-1, keepdim=True)


def test_quaternion_product_composes_rotations_and_round_trips():
    a, b = _unit_quats(16, 1), _unit_quats(16, 2)
    R = quaternion_to_matrix(quaternion_multiply(a, b))
    assert torch.allclose(R, quaternion_to_matrix(a) @ quaternion_to_matrix(b), atol=1e-5)
    for q, m in zip(a, quaternion_to_matrix(a)):
        back = matrix_to_quaternion(m)
        assert back[0] >= 0 and torch.allclose(back, q if q[0] >= 0 else -q, atol=1e-5)


def test_inverse_covariance_inverts_both_quaternion_conventions():
    q = _unit_quats(32, 3)
    s = torch.rand(32, 3, generator=torch.Generator().manual_seed(4)) * 0.1 + 0.01
    eye = torch.eye(3).expand(32, 3, 3)
    for quats, normalized in ((q, True), (q * 0.01, False)):  # legacy: raw, tiny quaternions
        cov = covariance_3d(s, quats, normalized=normalized)
        inv, sigma_max = inverse_covariance_3d(s, quats, normalized=normalized, min_scale=1e-6)
        assert torch.allclose(cov @ inv, eye, atol=2e-3), normalized
        assert torch.allclose(sigma_max, torch.linalg.eigvalsh(cov)[:, -1].sqrt(), rtol=1e-3), normalized


def test_intrinsics_and_projection_follow_the_pinhole_convention():
    assert focal_lengths(96, 64, 49.1) == (focal_length(64, 49.1),) * 2  # square pixels
    K = intrinsics(96, 64, 90.0, views=2)
    assert K.shape == (2, 3, 3) and K[0, 0, 0] == K[0, 1, 1] == 32.0 and K[0, 0, 2] == 48.0 and K[0, 1, 2] == 32.0
    c2w = orbit_cameras([0.0, 30.0], [0.0, 100.0], radius=2.0)
    w2c = world_to_camera(c2w)
    assert torch.allclose(w2c, torch.linalg.inv(opengl_to_opencv(c2w)), atol=1e-6)
    # the target (origin) lands on the principal point at depth = radius; +x of camera 0 is to the right
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])
    cam = pts @ w2c[0, :3, :3].T + w2c[0, :3, 3]
    px = pixel_coordinates(cam, K[0], cam[:, 2])
    assert torch.allclose(cam[:, 2], torch.full((3,), 2.0), atol=1e-6)
    assert torch.allclose(px[0], torch.tensor([48.0, 32.0]), atol=1e-4)
    assert px[1, 0] > 48.0 and px[2, 1] < 32.0  # right of centre; above centre (rows go down)
    assert math.isclose(float(px[1, 0] - 48.0), 32.0 * 0.1 / 2.0, rel_tol=1e-5)
