"""Rendering on CUDA: gsplat vs the PyTorch renderer (PSNR >= 45 dB), fallback, device parity."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians
from lgm_core.render import gsplat_backend, psnr, render, resolve_backend
from lgm_core.render.scenes import blob_scene

pytestmark = pytest.mark.gpu

VIEWS = dict(elevations=[0, 0, 0, 0, 25, -20], azimuths=[0, 90, 180, 270, 45, 225], size=512)


def _need_gsplat():
    if not gsplat_backend.available(torch.device("cuda")):
        pytest.skip(f"gsplat not usable here: {gsplat_backend.STATUS.reason}")


@pytest.fixture(scope="module")
def ref_gaussians(ref_dir):
    from safetensors.torch import load_file

    path = ref_dir / "lgm_tiny" / "output.safetensors"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return Gaussians.from_lgm_tensor(load_file(str(path))["gaussians"].float()).to("cuda")


def _agree(g, cams, min_db=45.0):
    a = render(g, cams, backend="torch")
    b = render(g, cams, backend="gsplat")
    assert a.backend == "torch" and b.backend == "gsplat"
    for v in range(len(cams)):
        assert psnr(a.image[0, v], b.image[0, v]) >= min_db, f"view {v}"
        assert psnr(a.alpha[0, v], b.alpha[0, v]) >= min_db, f"view {v} alpha"
        solid = (a.alpha[0, v] > 0.5) & (b.alpha[0, v] > 0.5)
        assert (a.depth[0, v][solid] - b.depth[0, v][solid]).abs().mean() < 1e-2


def test_backends_agree_on_reference_gaussians(ref_gaussians):
    _need_gsplat()
    _agree(ref_gaussians, Cameras.orbit(**VIEWS))


def test_backends_agree_on_realistic_scene():
    _need_gsplat()
    _agree(blob_scene(65536, seed=0, device="cuda"), Cameras.orbit(**VIEWS))


def test_backends_agree_on_legacy_rotations(ref_gaussians):
    _need_gsplat()
    g = dataclasses.replace(ref_gaussians, rotations=ref_gaussians.rotations * 0.004, normalized_rotations=False)
    _agree(g, Cameras.orbit(**VIEWS))


def test_backends_agree_batch_padding_background():
    _need_gsplat()
    batch = Gaussians.cat([blob_scene(3000, seed=1), blob_scene(2000, seed=2)], dim=0).to("cuda")
    cams = Cameras.orbit(10.0, [0.0, 120.0], size=(96, 64))
    a = render(batch, cams, backend="torch", background=(0.2, 0.3, 0.4))
    b = render(batch, cams, backend="gsplat", background=(0.2, 0.3, 0.4))
    assert b.image.shape == (2, 2, 64, 96, 3)
    assert psnr(a.image, b.image) >= 45


def test_out_device_cpu_pinned():
    g = blob_scene(5000, seed=5, device="cuda")
    cams = Cameras.turntable(12, 10.0, size=128)
    on_gpu = render(g, cams, views_per_chunk=5)
    on_cpu = render(g, cams, views_per_chunk=5, out_device="cpu")
    assert on_cpu.image.device.type == "cpu" and on_cpu.image.is_pinned()
    assert torch.equal(on_cpu.image, on_gpu.image.cpu()) and torch.equal(on_cpu.depth, on_gpu.depth.cpu())


def test_torch_backend_cuda_matches_cpu():
    g = blob_scene(20000, seed=3)
    cams = Cameras.orbit(15.0, [30.0, 200.0], size=256)
    cpu = render(g, cams, backend="torch")
    gpu = render(g.to("cuda"), cams, backend="torch")
    assert psnr(cpu.image, gpu.image.cpu()) > 60


def test_auto_prefers_gsplat_and_falls_back(monkeypatch, caplog):
    _need_gsplat()
    g = blob_scene(1000, seed=4, device="cuda")
    cams = Cameras.orbit(0.0, [0.0], size=64)
    assert render(g, cams).backend == "gsplat"
    monkeypatch.setenv("LGM_RENDER_BACKEND", "torch")
    assert render(g, cams).backend == "torch"
    monkeypatch.delenv("LGM_RENDER_BACKEND")
    # a gsplat failure at render time: one warning, then torch for good
    monkeypatch.setattr(gsplat_backend, "STATUS", gsplat_backend.GsplatStatus(checked=True, ok=True))

    def boom(*a, **k):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(gsplat_backend, "render_views", boom)
    with caplog.at_level(logging.WARNING, logger="lgm_core.render"):
        r = render(g, cams)
    assert r.backend == "torch"
    assert sum("unavailable" in rec.message for rec in caplog.records) == 1
    assert resolve_backend("auto", "cuda") == "torch"


# ---------------------------------------------------------------- the render contract, stage by stage
def test_gsplat_render_views_matches_torch_on_the_same_inputs():
    """Both backends' render_views on one SplatInputs (the contract of lgm_core.render.common)."""
    _need_gsplat()
    from lgm_core.render import torch_backend
    from lgm_core.render.common import camera_matrices, prepare_gaussians

    g = blob_scene(20000, seed=6, device="cuda")
    cams = Cameras.orbit(**VIEWS)
    for legacy in (False, True):
        h = dataclasses.replace(g, rotations=g.rotations * 0.004, normalized_rotations=False) if legacy else g
        inp = prepare_gaussians(h)
        vm, Ks = camera_matrices(cams, "cuda")
        bg = torch.ones(len(cams), 3, device="cuda")
        kw = dict(near=cams.near, backgrounds=bg)
        a = torch_backend.render_views(inp, 0, vm, Ks, cams.width, cams.height, **kw)
        b = gsplat_backend.render_views(inp, 0, vm, Ks, cams.width, cams.height, **kw)
        assert psnr(a.image.clamp(0, 1), b.image.clamp(0, 1)) >= 45 and psnr(a.alpha, b.alpha) >= 45, legacy


def test_projection_stage_matches_gsplat():
    """lgm_core.render.common.project against gsplat's fused projection kernel (means2d, depths, conics)."""
    _need_gsplat()
    import gsplat

    from lgm_core.render.common import camera_matrices, prepare_gaussians, project

    if not hasattr(gsplat, "fully_fused_projection"):
        pytest.skip("this gsplat has no fully_fused_projection")
    g = blob_scene(5000, seed=7, device="cuda")
    cams = Cameras.orbit(**VIEWS)
    inp = prepare_gaussians(g)
    vm, Ks = camera_matrices(cams, "cuda")
    ours = project(inp.means[0], inp.covs[0], vm, Ks, cams.width, cams.height, near=cams.near)
    c = inp.covs[0]  # gsplat takes the upper triangle [N, 6]: xx xy xz yy yz zz
    triu = torch.stack([c[:, 0, 0], c[:, 0, 1], c[:, 0, 2], c[:, 1, 1], c[:, 1, 2], c[:, 2, 2]], -1)
    radii, means2d, depths, conics, _ = gsplat.fully_fused_projection(
        inp.means[0], triu, None, None, vm, Ks, cams.width, cams.height, eps2d=0.3, near_plane=cams.near)
    seen = radii if radii.dim() == 2 else radii.amax(-1)
    both = (seen > 0) & (ours.radii > 0)
    assert bool(both.any())
    assert torch.allclose(ours.means2d[both], means2d[both], atol=1e-2)
    assert torch.allclose(ours.depths[both], depths[both], atol=1e-5)
    assert torch.allclose(ours.conics[both], conics[both], rtol=1e-3, atol=1e-5)
