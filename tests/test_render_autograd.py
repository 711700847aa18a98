"""The differentiable PyTorch rasterizer: same forward as the tile renderer, gradients = finite differences."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians
from lgm_core.render import autograd_backend, torch_backend
from lgm_core.render.common import camera_matrices, prepare_gaussians, project
from lgm_core.render.scenes import blob_scene
from lgm_core.training.rendering import render_views

pytestmark = pytest.mark.usefixtures("single_thread")


def _both(g: Gaussians, cams: Cameras, with_depth=True):
    inp = prepare_gaussians(g)
    vm, Ks = camera_matrices(cams, "cpu")
    proj = project(inp.means[0], inp.covs[0], vm, Ks, cams.width, cams.height)
    C = len(cams)
    feats = inp.colors[0][None].expand(C, -1, -1)
    if with_depth:
        feats = torch.cat([feats, proj.depths[..., None]], -1)
    args = (proj.means2d, proj.conics, proj.depths, proj.radii, inp.opacities[0], feats, cams.width, cams.height)
    return torch_backend.rasterize(*args), autograd_backend.rasterize(*args)


@pytest.mark.parametrize("n,scale,size", [(3000, 3.0, (64, 56)), (600, 6.0, (40, 48))])
def test_forward_matches_tile_renderer(n, scale, size):
    g = blob_scene(n, seed=3)
    g = dataclasses.replace(g, scales=g.scales * scale)
    cams = Cameras.orbit([10.0, -30.0, 0.0], [20.0, 200.0, 90.0], size=size)
    (acc1, a1), (acc2, a2) = _both(g, cams)
    assert acc2.shape == acc1.shape and a2.shape == a1.shape
    d = (acc1 - acc2).abs()
    # identical rules; α is computed in another order of operations, so a pixel whose α sits exactly
    # at the 1/255 cut can differ by one such Gaussian's weight
    assert d.max() < 2e-3 and (d > 1e-5).float().mean() < 1e-3
    assert (a1 - a2).abs().max() < 2e-3


def test_forward_early_stop_and_clamp():
    def one(z, rgb, o):
        return Gaussians.from_rgb(torch.tensor([[[0.0, 0.0, z]]]), torch.full((1, 1, 3), 0.3),
                                  torch.tensor([[[1.0, 0, 0, 0]]]), torch.tensor([[[o]]]), torch.tensor([[rgb]]))
    g = Gaussians.cat([one(0.2, (1, 0, 0), 1.0), one(0.1, (0, 1, 0), 0.5), one(0.0, (0, 0, 1), 1.0)], dim=1)
    cams = Cameras.orbit(0.0, [0.0], size=32)
    (acc1, a1), (acc2, a2) = _both(g, cams, with_depth=False)
    assert torch.allclose(acc2[0, 16, 16], torch.tensor([0.99, 0.005, 0.0]), atol=1e-4)
    assert torch.allclose(acc1, acc2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)


def test_empty_scene_and_culled_gaussians():
    g = blob_scene(50, seed=0)
    g = dataclasses.replace(g, positions=g.positions + torch.tensor([0.0, 0.0, 5.0]))  # behind the camera
    cams = Cameras.orbit(0.0, [0.0], size=16)
    (_, a1), (acc2, a2) = _both(g, cams)
    assert torch.equal(a2, torch.zeros_like(a2)) and torch.equal(a1, a2)


def _smooth_scene():
    pos = torch.tensor([[0.02, 0.01, 0.0], [-0.05, 0.03, 0.1], [0.03, -0.04, -0.1]], dtype=torch.float64)
    scales = torch.tensor([[0.12, 0.1, 0.14], [0.1, 0.13, 0.11], [0.15, 0.12, 0.1]], dtype=torch.float64)
    quats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, 0.0, 0.3, 0.2],
                                                        [1.0, -0.2, 0.0, 0.1]], dtype=torch.float64), dim=-1)
    opac = torch.tensor([[0.5], [0.4], [0.45]], dtype=torch.float64)
    rgb = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=torch.float64)
    return torch.cat([pos, opac, scales, quats, rgb], dim=-1)[None]  # [1, 3, 14]


def test_gradients_match_finite_differences():
    """Loss = weighted sum over a central window where every Gaussian's α is far above 1/255 and T
    far above 1e-4, so the loss is smooth in every parameter there."""
    params = _smooth_scene()
    c2w = Cameras.orbit([0.0, 15.0], [0.0, 70.0], size=32).c2w[None]
    weights = torch.rand(1, 2, 4, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    window = torch.zeros(32, 32, dtype=torch.float64)
    window[12:20, 12:20] = 1.0

    def loss_of(p):
        img, alpha = render_views(p.float(), c2w, 32, 49.1, backend="torch")
        out = torch.cat([img, alpha], dim=2).double()
        return (out * weights * window).sum()

    p = params.clone().requires_grad_(True)
    loss_of(p).backward()
    grad = p.grad[0]
    eps = 1e-3
    # position, opacity, scale and colour channels of every Gaussian (rotation: the normalised quaternion)
    for n in range(3):
        for ch in (0, 1, 2, 3, 4, 5, 6, 8, 11, 12, 13):
            hi, lo = params.clone(), params.clone()
            hi[0, n, ch] += eps
            lo[0, n, ch] -= eps
            with torch.no_grad():
                fd = (loss_of(hi) - loss_of(lo)) / (2 * eps)
            assert abs(float(grad[n, ch]) - float(fd)) <= 2e-2 * max(1.0, abs(float(fd))), (n, ch, float(grad[n, ch]), float(fd))
    assert grad.abs().sum() > 0


def test_render_views_matches_inference_renderer():
    """Training renders (per-sample cameras, autograd backend) == lgm_core.render.render (clamped image, alpha)."""
    from lgm_core.render import render

    g = blob_scene(800, seed=5)
    cams = Cameras.orbit([0.0, 20.0, -10.0], [0.0, 120.0, 250.0], size=48)
    ref = render(g, cams, backend="torch")
    img, alpha = render_views(g.to_lgm_tensor(), cams.c2w[None], 48, cams.fovy, backend="torch")
    assert (img[0].permute(0, 2, 3, 1) - ref.image[0]).abs().max() < 2e-3
    assert (alpha[0].permute(0, 2, 3, 1) - ref.alpha[0]).abs().max() < 2e-3
