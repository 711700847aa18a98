"""The render backend contract (lgm_core.render.common): one preparation step, the same inputs and
outputs for every backend, backends compared with each other stage by stage (CPU backends here;
gsplat against torch in test_render_gpu.py)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians
from lgm_core.geometry import covariance_3d
from lgm_core.render import BACKEND_MODULES, render
from lgm_core.render.common import SplatInputs, background_tensor, camera_matrices, prepare_gaussians
from lgm_core.render.scenes import blob_scene

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_backend_implements_the_same_render_views():
    params = {name: list(inspect.signature(m.render_views).parameters) for name, m in BACKEND_MODULES.items()}
    required = ["inputs", "item", "viewmats", "Ks", "width", "height", "near", "backgrounds", "depth"]
    for name, names in params.items():
        assert names[:len(required)] == required, name


def test_prepare_gaussians_is_the_one_preparation():
    """Padding invisible, scale modifier folded into the scales, covariances from the (legacy) raw
    quaternions, colours from the SH DC term in float32."""
    a, b = blob_scene(40, seed=1), blob_scene(25, seed=2)
    batch = Gaussians.cat([a, b], dim=0)
    legacy = dataclasses.replace(batch, rotations=batch.rotations * 0.01, normalized_rotations=False)
    inp = prepare_gaussians(legacy, scale_modifier=1.5)
    assert isinstance(inp, SplatInputs) and not inp.normalized
    assert inp.means.dtype == inp.covs.dtype == torch.float32
    assert torch.equal(inp.opacities[1, 25:], torch.zeros(15)) and bool((inp.opacities[1, :25] > 0).all())
    assert torch.equal(inp.scales, legacy.scales * 1.5)
    assert torch.equal(inp.covs, covariance_3d(legacy.scales, legacy.rotations, normalized=False, scale_modifier=1.5))
    assert torch.allclose(inp.colors, legacy.rgb, atol=1e-6)
    half = prepare_gaussians(legacy.to(dtype=torch.float16))
    assert half.colors.dtype == torch.float32


def _views(g: Gaussians, cams: Cameras, background=(0.2, 0.4, 0.6)):
    inp = prepare_gaussians(g)
    vm, Ks = camera_matrices(cams, "cpu")
    bg = background_tensor(background, 1, len(cams), "cpu")[0]
    kw = dict(near=cams.near, backgrounds=bg)
    return {name: BACKEND_MODULES[name].render_views(inp, 0, vm, Ks, cams.width, cams.height, **kw)
            for name in ("torch", "autograd")}


def test_cpu_backends_agree_through_the_contract():
    g = blob_scene(2500, seed=3)
    g = dataclasses.replace(g, scales=g.scales * 3.0)
    cams = Cameras.orbit([10.0, -30.0], [20.0, 200.0], size=(48, 40))
    out = _views(g, cams)
    t, a = out["torch"], out["autograd"]
    assert t.image.shape == a.image.shape == (2, 40, 48, 3) and t.depth.shape == a.depth.shape == (2, 40, 48, 1)
    # same rules; α in another order of operations (see test_render_autograd)
    assert (t.image - a.image).abs().max() < 2e-3 and (t.alpha - a.alpha).abs().max() < 2e-3
    solid = (t.alpha > 0.5) & (a.alpha > 0.5)
    assert bool(solid.any()) and (t.depth - a.depth)[solid].abs().max() < 1e-2


def test_render_is_the_torch_contract_clamped():
    """The dispatcher adds nothing but chunking and clamping to the backend's render_views."""
    g = blob_scene(1500, seed=4)
    cams = Cameras.orbit(15.0, [0.0, 90.0, 180.0], size=32)
    direct = _views(g, cams, background=(1.0, 1.0, 1.0))["torch"]
    r = render(g, cams, backend="torch")  # one chunk: the same projection batch, so bit for bit
    assert torch.equal(r.image[0], direct.image.clamp(0, 1)) and torch.equal(r.alpha[0], direct.alpha.clamp(0, 1))
    assert torch.equal(r.depth[0], direct.depth)


def test_depth_is_optional_and_changes_no_colour():
    g = blob_scene(800, seed=5)
    cams = Cameras.orbit(0.0, [45.0], size=32)
    inp = prepare_gaussians(g)
    vm, Ks = camera_matrices(cams, "cpu")
    bg = torch.ones(1, 3)
    for name in ("torch", "autograd"):
        with_d = BACKEND_MODULES[name].render_views(inp, 0, vm, Ks, 32, 32, near=0.2, backgrounds=bg)
        without = BACKEND_MODULES[name].render_views(inp, 0, vm, Ks, 32, 32, near=0.2, backgrounds=bg, depth=False)
        assert without.depth is None and torch.equal(with_d.image, without.image), name


def test_gsplat_state_lives_in_one_status_object(monkeypatch, caplog):
    """No hidden module state: asking for gsplat on the CPU is noted once in the status object."""
    import logging

    from lgm_core.render import gsplat_backend, resolve_backend

    status = gsplat_backend.GsplatStatus()
    monkeypatch.setattr(gsplat_backend, "STATUS", status)
    with caplog.at_level(logging.WARNING, logger="lgm_core.render"):
        assert resolve_backend("gsplat", "cpu") == resolve_backend("gsplat", "cpu") == "torch"
    assert status.warned_not_cuda and sum("needs CUDA" in r.message for r in caplog.records) == 1
    assert not gsplat_backend.available("cpu") and not status.checked  # a CPU device never probes
    status.reset()
    assert status == gsplat_backend.GsplatStatus()
