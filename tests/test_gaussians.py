"""The Gaussians container."""

import math

import pytest
import torch

from lgm_core import Gaussians
from lgm_core.gaussians import SH_C0
from lgm_core.geometry import quaternion_to_matrix


def random_gaussians(b=2, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, 14, generator=g)
    x[..., 0:3] = x[..., 0:3] * 2 - 1
    x[..., 7:11] = torch.nn.functional.normalize(torch.randn(b, n, 4, generator=g), dim=-1)
    return x, Gaussians.from_lgm_tensor(x)


def test_lgm_tensor_round_trip_and_layout():
    x, g = random_gaussians()
    assert g.positions.shape == (2, 10, 3) and g.sh.shape == (2, 10, 1, 3) and g.opacities.shape == (2, 10, 1)
    assert torch.allclose(g.rgb, x[..., 11:14], atol=1e-6)
    assert torch.allclose(g.sh[..., 0, :], (x[..., 11:14] - 0.5) / SH_C0)
    assert torch.allclose(g.to_lgm_tensor(), x, atol=1e-6)
    assert g.sh_degree == 0 and len(g) == 2 and g.num_gaussians == 10


def test_validation_errors():
    _, g = random_gaussians()
    with pytest.raises(ValueError, match="scales"):
        Gaussians(g.positions, g.scales[:, :5], g.rotations, g.opacities, g.sh)
    with pytest.raises(ValueError, match="LGM tensor"):
        Gaussians.from_lgm_tensor(torch.zeros(1, 5, 13))


def test_to_and_indexing():
    _, g = random_gaussians(b=3)
    h = g.to(dtype=torch.float16)
    assert h.dtype == torch.float16 and h.sh.dtype == torch.float16
    one = g[1]
    assert one.batch_size == 1 and torch.equal(one.positions[0], g.positions[1])
    assert g[-1].batch_size == 1 and torch.equal(g[-1].positions[0], g.positions[2])
    assert g[0:2].batch_size == 2


def test_prune_packs_and_pads_per_item():
    _, g = random_gaussians(b=2, n=6)
    g.opacities[0, :, 0] = torch.tensor([0.9, 0.001, 0.8, 0.7, 0.002, 0.6])
    g.opacities[1, :, 0] = torch.tensor([0.001, 0.9, 0.001, 0.001, 0.001, 0.001])
    p = g.prune(0.005)
    assert p.counts.tolist() == [4, 1] and p.num_gaussians == 4
    assert torch.equal(p.positions[0], g.positions[0, [0, 2, 3, 5]])  # order kept
    assert torch.equal(p.positions[1, 0], g.positions[1, 1])
    assert p.opacities[1, 1:].abs().sum() == 0  # padding is transparent
    assert p.valid_mask().tolist() == [[True] * 4, [True, False, False, False]]
    assert p[1].num_gaussians == 1 and p[1].counts is None  # indexing trims the padding


def test_cat_batch_and_gaussian_axes():
    _, a = random_gaussians(b=1, n=4)
    _, b = random_gaussians(b=2, n=6, seed=1)
    c = Gaussians.cat([a, b])
    assert c.batch_size == 3 and c.num_gaussians == 6 and c.counts.tolist() == [4, 6, 6]
    d = Gaussians.cat([b, b], dim=1)
    assert d.batch_size == 2 and d.num_gaussians == 12 and d.counts is None
    e = Gaussians.cat([c, c], dim=1)  # padded items merge item by item
    assert e.counts.tolist() == [8, 12, 12]
    assert torch.equal(e.positions[0, 4:8], a.positions[0])


def test_rigid_transform():
    _, g = random_gaussians(b=1, n=20)
    angle = math.pi / 2
    R = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]])
    t = torch.tensor([0.1, -0.2, 0.3])
    h = g.transform(R, t, scale=2.0)
    assert torch.allclose(h.positions, 2 * g.positions @ R.T + t, atol=1e-6)
    assert torch.allclose(h.scales, 2 * g.scales)
    # the Gaussian's axes rotate with the scene: R_new = R @ R_old
    assert torch.allclose(quaternion_to_matrix(h.rotations), R @ quaternion_to_matrix(g.rotations), atol=1e-5)
    with pytest.raises(ValueError, match="proper rotation"):
        g.transform(torch.diag(torch.tensor([1.0, 1.0, -1.0])))


def test_raw_quaternion_matrix_matches_spec_formula():
    q = torch.tensor([0.1, 0.02, -0.03, 0.05])  # not unit: the legacy rasterizer uses it raw
    w, x, y, z = q
    expected = torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    assert torch.allclose(quaternion_to_matrix(q, normalize=False), expected)
