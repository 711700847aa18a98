"""Splat rendering on CPU: conventions, semantics of the original rasterizer, shapes, edge cases."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians
from lgm_core.geometry import covariance_3d
from lgm_core.render import RenderResult, psnr, render, resolve_backend
from lgm_core.render.common import ALPHA_MAX, ALPHA_MIN, T_MIN, camera_matrices, prepare_gaussians, project
from lgm_core.render.scenes import axis_markers, blob_scene


def _one(pos, scale=0.05, opacity=1.0, rgb=(1.0, 0.0, 0.0), quat=(1.0, 0.0, 0.0, 0.0)) -> Gaussians:
    p = torch.tensor([pos], dtype=torch.float32)
    s = torch.tensor([scale if isinstance(scale, (tuple, list)) else [scale] * 3], dtype=torch.float32)
    q = torch.tensor([quat], dtype=torch.float32)
    o = torch.tensor([[opacity]], dtype=torch.float32)
    c = torch.tensor([rgb], dtype=torch.float32)
    return Gaussians.from_rgb(p[None], s[None], q[None], o[None], c[None])


def _centroid(mask: torch.Tensor) -> tuple:
    ys, xs = mask.nonzero(as_tuple=True)
    assert len(xs) > 0, "colour not found in the image"
    return xs.float().mean().item(), ys.float().mean().item()


def _dense_reference(g: Gaussians, cams: Cameras, background=(1.0, 1.0, 1.0)) -> tuple:
    """Per-pixel brute force of lgm_spec §6.3 (including the 16x16 tile-rectangle footprint), one
    batch item, float64 compositing. Returns image [V,H,W,3], alpha [V,H,W,1], depth [V,H,W,1]."""
    inp = prepare_gaussians(g)
    viewmats, Ks = camera_matrices(cams, "cpu")
    W, H = cams.width, cams.height
    proj = project(inp.means[0], inp.covs[0], viewmats, Ks, W, H, near=cams.near)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    tx, ty = (xs // 16).reshape(-1), (ys // 16).reshape(-1)
    px, py = xs.reshape(-1).double() + 0.5, ys.reshape(-1).double() + 0.5
    bg = torch.tensor(background, dtype=torch.float64)
    out_img, out_a, out_d = [], [], []
    for v in range(len(cams)):
        img = torch.zeros(H * W, 3, dtype=torch.float64)
        acc_d = torch.zeros(H * W, dtype=torch.float64)
        T = torch.ones(H * W, dtype=torch.float64)
        done = torch.zeros(H * W, dtype=torch.bool)
        order = torch.sort(proj.depths[v], stable=True).indices
        for n in order.tolist():
            r = int(proj.radii[v, n])
            if r <= 0:
                continue
            mx, my = (proj.means2d[v, n] - 0.5).tolist()
            x0 = min(math.ceil(W / 16), max(0, int((mx - r) / 16)))
            x1 = min(math.ceil(W / 16), max(0, int((mx + r + 15) / 16)))
            y0 = min(math.ceil(H / 16), max(0, int((my - r) / 16)))
            y1 = min(math.ceil(H / 16), max(0, int((my + r + 15) / 16)))
            inside = (tx >= x0) & (tx < x1) & (ty >= y0) & (ty < y1)
            a_, b_, c_ = proj.conics[v, n].double().tolist()
            dx, dy = px - proj.means2d[v, n, 0].double(), py - proj.means2d[v, n, 1].double()
            power = -0.5 * (a_ * dx * dx + c_ * dy * dy) - b_ * dx * dy
            alpha = torch.clamp(inp.opacities[0, n].double() * torch.exp(power), max=ALPHA_MAX)
            use = inside & ~done & (power <= 0) & (alpha >= ALPHA_MIN)
            test_T = T * (1 - alpha)
            stop = use & (test_T < T_MIN)
            done |= stop
            use &= ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            img += w[:, None] * inp.colors[0, n].double()
            acc_d += w * proj.depths[v, n].double()
            T = torch.where(use, test_T, T)
        alpha_img = 1 - T
        out_img.append((img + T[:, None] * bg).clamp(0, 1).reshape(H, W, 3))
        out_a.append(alpha_img.reshape(H, W, 1))
        out_d.append((acc_d / alpha_img.clamp(min=1e-10)).reshape(H, W, 1))
    return torch.stack(out_img).float(), torch.stack(out_a).float(), torch.stack(out_d).float()


# ---------------------------------------------------------------------------------------- orientation
def test_orientation_front_camera():
    """Default front camera (azimuth 0, on +z looking at the origin): +x right, +y up."""
    cams = Cameras.orbit(0.0, [0.0], size=64)
    img = render(axis_markers(), cams, backend="torch").image[0, 0]
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)
    green = (img[..., 1] > 0.7) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)
    blue = (img[..., 2] > 0.7) & (img[..., 0] < 0.3) & (img[..., 1] < 0.3)
    rx, ry = _centroid(red)
    gx, gy = _centroid(green)
    bx, by = _centroid(blue)
    assert rx > 40 and abs(ry - 32) < 3, "red (+x) must be right of centre (mirrored render?)"
    assert gy < 24 and abs(gx - 32) < 3, "green (+y) must be above centre (upside-down render?)"
    assert abs(bx - 32) < 2 and abs(by - 32) < 2
    # blue (+z) is nearest to the camera: it hides the centre, and it is the nearest depth
    r = render(axis_markers(), cams, backend="torch")
    assert r.depth[0, 0, 32, 32, 0] < r.depth[0, 0, int(ry), int(rx), 0]


def test_orientation_side_and_top_cameras():
    g = axis_markers()
    # azimuth 90: camera on +x looking at -x; its right axis is -z, so blue (+z) appears on the left
    img = render(g, Cameras.orbit(0.0, [90.0], size=64), backend="torch").image[0, 0]
    blue = (img[..., 2] > 0.7) & (img[..., 0] < 0.3) & (img[..., 1] < 0.3)
    green = (img[..., 1] > 0.7) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)
    assert _centroid(blue)[0] < 24
    assert _centroid(green)[1] < 24
    # positive elevation = camera above: looking down, +y points up-screen only partly and the +z
    # blob (towards the viewer's side) moves down the image
    img = render(g, Cameras.orbit(60.0, [0.0], size=64), backend="torch").image[0, 0]
    blue = (img[..., 2] > 0.7) & (img[..., 0] < 0.3) & (img[..., 1] < 0.3)
    green = (img[..., 1] > 0.7) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)
    assert _centroid(blue)[1] > 36
    assert _centroid(green)[1] < 32


def test_projection_matches_pinhole_and_spec_constants():
    cams = Cameras.orbit(0.0, [0.0], size=512)
    viewmats, Ks = camera_matrices(cams, "cpu")
    assert torch.allclose(Ks[0, 0, 0], torch.tensor(512 / (2 * math.tan(math.radians(49.1) / 2))))
    # a point 1 unit in front of the camera at (0.1, 0.2) world -> right/up of the centre
    means = torch.tensor([[0.1, 0.2, 0.5]])
    proj = project(means, covariance_3d(torch.full((1, 3), 0.01), torch.tensor([[1.0, 0, 0, 0]])),
                   viewmats, Ks, 512, 512)
    f = Ks[0, 0, 0]
    assert torch.allclose(proj.depths[0, 0], torch.tensor(1.0))
    assert torch.allclose(proj.means2d[0, 0], torch.stack([256 + f * 0.1, 256 - f * 0.2]), atol=1e-3)
    # on the axis, the 2-D covariance is (f·0.01)² + 0.3 on the diagonal -> conic
    proj = project(torch.tensor([[0.0, 0.0, 0.5]]),
                   covariance_3d(torch.full((1, 3), 0.01), torch.tensor([[1.0, 0, 0, 0]])), viewmats, Ks, 512, 512)
    var = float((f * 0.01) ** 2 + 0.3)
    assert torch.allclose(proj.conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var]), rtol=1e-4, atol=1e-7)
    assert int(proj.radii[0, 0]) == math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))


def test_camera_matrices_match_foundation_cameras():
    cams = Cameras.orbit([10.0, -30.0, 80.0], [0.0, 95.0, 200.0], size=(64, 48))
    vm, Ks = camera_matrices(cams, "cpu")
    assert torch.allclose(vm, cams.world_to_camera_opencv(), atol=1e-6)
    assert torch.equal(Ks, cams.intrinsics())


# ---------------------------------------------------------------------------------------- semantics
def test_matches_dense_reference_of_the_spec():
    g = blob_scene(600, seed=3)
    g = dataclasses.replace(g, scales=g.scales * 4)
    cams = Cameras.orbit([10.0, -30.0], [20.0, 200.0], size=(48, 40))
    r = render(g, cams, backend="torch", background=(0.2, 0.4, 0.9))
    img, a, d = _dense_reference(g, cams, background=(0.2, 0.4, 0.9))
    assert (r.image[0] - img).abs().max() < 2e-5
    assert (r.alpha[0] - a).abs().max() < 2e-5
    assert (r.depth[0] - d)[a > 0.05].abs().max() < 1e-4


def test_early_stop_alpha_clamp_and_skip():
    """Front to back: α clamps at 0.99; a Gaussian that would drop T below 1e-4 is not used."""
    def stack(opacities):
        return Gaussians.cat([_one((0, 0, z), scale=0.3, rgb=c, opacity=o) for z, c, o in
                              zip((0.2, 0.1, 0.0), [(1, 0, 0), (0, 1, 0), (0, 0, 1)], opacities)], dim=1)

    cams = Cameras.orbit(0.0, [0.0], size=32)
    r = render(stack((1.0, 0.5, 1.0)), cams, backend="torch", background=(0, 0, 0))
    # red: α = 0.99 (clamped); green: 0.5·0.01; blue would leave T = 0.005·0.01 < 1e-4: skipped
    assert torch.allclose(r.image[0, 0, 16, 16], torch.tensor([0.99, 0.005, 0.0]), atol=1e-4)
    assert torch.allclose(r.alpha[0, 0, 16, 16], torch.tensor([0.995]), atol=1e-4)
    # two opaque layers: T = (1 - 0.99)² falls below 1e-4 in float32, so the 2nd is not used
    r = render(stack((1.0, 1.0, 1.0)), cams, backend="torch", background=(0, 0, 0))
    assert torch.allclose(r.image[0, 0, 16, 16], torch.tensor([0.99, 0.0, 0.0]), atol=1e-5)
    # α below 1/255 is skipped entirely: a faint Gaussian leaves the background untouched
    faint = render(_one((0, 0, 0), opacity=0.9 / 255), Cameras.orbit(0.0, [0.0], size=16), backend="torch")
    assert torch.equal(faint.image, torch.ones_like(faint.image))
    assert torch.equal(faint.alpha, torch.zeros_like(faint.alpha))


def test_alpha_and_depth_sanity():
    g = blob_scene(4000, seed=1)
    cams = Cameras.orbit(0.0, [0.0, 90.0], size=64)
    r = render(g, cams, backend="torch")
    assert isinstance(r, RenderResult)
    for t in (r.image, r.alpha, r.depth):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert r.image.min() >= 0 and r.image.max() <= 1
    assert r.alpha.min() >= 0 and r.alpha.max() <= 1
    assert r.alpha[0, :, 32, 32].min() > 0.99  # the object covers the centre
    assert r.alpha[0, :, 0, 0].max() == 0  # corners are empty
    assert (r.depth[r.alpha == 0] == 0).all()
    solid = r.depth[r.alpha > 0.9]
    assert solid.min() > 1.5 - 0.7 and solid.max() < 1.5 + 0.7  # around the orbit radius
    # depth of a single Gaussian is its camera z everywhere it is visible
    one = render(_one((0.0, 0.0, 0.3)), Cameras.orbit(0.0, [0.0], size=32), backend="torch")
    assert torch.allclose(one.depth[one.alpha > 0], torch.tensor(1.2), atol=1e-5)


def test_background_colour():
    g = axis_markers()
    cams = Cameras.orbit(0.0, [0.0], size=32)
    r = render(g, cams, background=(0.1, 0.2, 0.3), backend="torch")
    assert torch.allclose(r.image[0, 0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))
    w = render(g, cams, backend="torch")  # default white
    assert torch.allclose(w.image[0, 0, 0, 0], torch.ones(3))
    # colour = premultiplied + (1 - alpha) * background, everywhere
    diff = w.image - r.image
    expect = (1 - r.alpha) * (torch.ones(3) - torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(diff, expect, atol=1e-5)
    # per-view backgrounds broadcast as [B, V, 3]
    two = render(g, Cameras.orbit(0.0, [0.0, 0.0], size=32), backend="torch",
                 background=torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]]))
    assert torch.allclose(two.image[0, 1, 0, 0], torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError):
        render(g, cams, background=(1.0, 1.0))


def test_scale_modifier():
    g = _one((0.0, 0.0, 0.0), scale=0.02)
    cams = Cameras.orbit(0.0, [0.0], size=64)
    a1 = render(g, cams, backend="torch").alpha
    a2 = render(g, cams, backend="torch", scale_modifier=2.0).alpha
    big = render(dataclasses.replace(g, scales=g.scales * 2), cams, backend="torch").alpha
    assert torch.equal(a2, big)
    assert (a2 > 0.5).sum() > 3 * (a1 > 0.5).sum()
    with pytest.raises(ValueError):
        render(g, cams, scale_modifier=0.0)


def test_batch_and_multi_camera_shapes_and_independence():
    g0, g1 = blob_scene(1500, seed=0), axis_markers()
    batch = Gaussians.cat([g0, g1], dim=0)  # padded: counts = [1500, 3]
    assert batch.counts is not None
    cams = Cameras.orbit(15.0, [0.0, 120.0, 240.0], size=(40, 24))
    r = render(batch, cams, backend="torch")
    assert r.image.shape == (2, 3, 24, 40, 3)
    assert r.alpha.shape == (2, 3, 24, 40, 1) and r.depth.shape == (2, 3, 24, 40, 1)
    # each batch item renders as if alone (padding is invisible), each view as if alone
    alone = render(g1, cams, backend="torch")
    assert torch.allclose(r.image[1], alone.image[0], atol=1e-6)
    single_view = render(g0, cams[1], backend="torch")
    assert torch.allclose(r.image[0, 1], single_view.image[0, 0], atol=1e-6)
    chunked = render(batch, cams, backend="torch", views_per_chunk=1)
    assert torch.allclose(chunked.image, r.image, atol=1e-6)


def test_bounded_memory_paths_agree():
    """Tiny pair and chunk budgets (many bands, many sub-batches) give the same image."""
    from lgm_core.render import torch_backend

    g = blob_scene(3000, seed=2)
    cams = Cameras.orbit(0.0, [30.0, 60.0], size=64)
    inp = prepare_gaussians(g)
    vm, Ks = camera_matrices(cams, "cpu")
    proj = project(inp.means[0], inp.covs[0], vm, Ks, 64, 64)
    feats = inp.colors[0]
    args = (proj.means2d, proj.conics, proj.depths, proj.radii, inp.opacities[0], feats, 64, 64)
    ref_c, ref_a = torch_backend.rasterize(*args)
    small_c, small_a = torch_backend.rasterize(*args, K=8, max_pairs=500, chunk_elems=8 * 256 * 3)
    assert torch.allclose(ref_c, small_c, atol=1e-5) and torch.allclose(ref_a, small_a, atol=1e-5)


def test_legacy_rotation_path():
    """Legacy Gaussians: covariance from the raw quaternion (tiny, un-normalised -> ~axis aligned)."""
    g = blob_scene(2000, seed=4)
    g = dataclasses.replace(g, scales=g.scales * torch.tensor([3.0, 1.0, 0.5]))
    tiny = g.rotations * 0.004  # what the pre-fix activation produces: norm ~ 1/sqrt(N)
    legacy = dataclasses.replace(g, rotations=tiny, normalized_rotations=False)
    axis_aligned = dataclasses.replace(g, rotations=torch.tensor([1.0, 0, 0, 0]).expand_as(g.rotations).clone())
    normalised = dataclasses.replace(g, rotations=tiny)  # flag True: the quaternion is normalised
    cams = Cameras.orbit(10.0, [30.0], size=64)
    r_legacy = render(legacy, cams, backend="torch").image
    assert psnr(r_legacy, render(axis_aligned, cams, backend="torch").image) > 45
    assert psnr(r_legacy, render(normalised, cams, backend="torch").image) < 40
    # the covariance itself follows the raw formula R(q) diag(s²) R(q)ᵀ without normalisation
    q = torch.tensor([[0.3, 0.1, -0.2, 0.05]])
    s = torch.tensor([[0.1, 0.2, 0.3]])
    w, x, y, z = q[0].tolist()
    R = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    expect = R @ torch.diag(s[0] ** 2) @ R.T
    assert torch.allclose(covariance_3d(s, q, normalized=False)[0], expect, atol=1e-6)


def test_empty_and_single_gaussian_scenes():
    cams = Cameras.orbit(0.0, [0.0, 90.0], size=32)
    empty = Gaussians.from_rgb(torch.zeros(1, 0, 3), torch.zeros(1, 0, 3), torch.zeros(1, 0, 4),
                               torch.zeros(1, 0, 1), torch.zeros(1, 0, 3))
    r = render(empty, cams, backend="torch", background=(0.3, 0.3, 0.3))
    assert r.image.shape == (1, 2, 32, 32, 3)
    assert torch.allclose(r.image, torch.full_like(r.image, 0.3))
    assert (r.alpha == 0).all() and (r.depth == 0).all()
    one = render(_one((0.0, 0.0, 0.0), scale=0.15, rgb=(0.0, 0.0, 0.0)), cams, backend="torch")
    assert one.alpha.max() > 0.98 and one.alpha[0, :, 0, 0].max() == 0
    assert one.image[0, 0, 16, 16].max() < 0.02
    # behind the camera / closer than the near plane: culled
    near = render(_one((0.0, 0.0, 1.35)), Cameras.orbit(0.0, [0.0], size=32), backend="torch")
    assert (near.alpha == 0).all()
    behind = render(_one((0.0, 0.0, 2.0)), Cameras.orbit(0.0, [0.0], size=32), backend="torch")
    assert (behind.alpha == 0).all()


def test_half_precision_input_and_errors():
    g = blob_scene(500, seed=5)
    cams = Cameras.orbit(0.0, [0.0], size=32)
    r16 = render(g.to(dtype=torch.float16), cams, backend="torch")
    assert r16.image.dtype == torch.float32
    assert psnr(r16.image, render(g, cams, backend="torch").image) > 40
    with pytest.raises(ValueError):
        render(g, cams, backend="vulkan")
    with pytest.raises(TypeError):
        render(g.positions, cams)


def test_backend_selection_on_cpu(monkeypatch, caplog):
    monkeypatch.setenv("LGM_RENDER_BACKEND", "gsplat")
    with caplog.at_level(logging.WARNING, logger="lgm_core.render"):
        assert resolve_backend("auto", "cpu") == "torch"  # gsplat needs CUDA: falls back
    monkeypatch.setenv("LGM_RENDER_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    r = render(axis_markers(), Cameras.orbit(0.0, [0.0], size=16), backend="gsplat")
    assert r.backend == "torch"  # never crashes without CUDA/gsplat
