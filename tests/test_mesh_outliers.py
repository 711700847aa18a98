"""Mesh extraction with stray Gaussians (issue 14 item 6): strays at 10, 1e3 and 1e30 units must
not hang, fail or collapse the object; the grid is bounded by the object and the ignored
Gaussians are counted."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from lgm_core.mesh import extract_mesh
from lgm_core.mesh.extract import _within_object
from lgm_core.mesh.synthetic import make_scene


@pytest.fixture(scope="module")
def sphere():
    return make_scene("sphere", n=6000, seed=0)


@pytest.fixture(scope="module")
def clean_mesh(sphere, single_thread):
    return extract_mesh(sphere, resolution=48, target_faces=2000, texture=False)


def _with_strays(g, dist: float, k: int = 3):
    h = g.clone()
    for i in range(k):
        h.positions[0, i] = torch.tensor([dist, -dist * 0.3 * i, dist * 0.1])
        h.opacities[0, i] = 0.95
    return h


@pytest.mark.parametrize("dist", [10.0, 1e3, 1e30])
def test_far_strays_are_ignored_and_counted(sphere, clean_mesh, dist, caplog, single_thread):
    messages = []
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="lgm_core"):
        mesh = extract_mesh(_with_strays(sphere, dist), resolution=48, target_faces=2000,
                            texture=dist == 1e30, texture_size=64, progress=lambda m, f: messages.append(m))
    assert time.perf_counter() - t0 < 60
    assert "ignored 3 of 6000 visible Gaussians" in caplog.text
    assert any("ignored 3 of 6000" in m for m in messages)
    # the object is the same object, not a few voxels of a huge grid
    assert abs(mesh.num_faces - clean_mesh.num_faces) <= 0.1 * clean_mesh.num_faces
    assert float(mesh.vertices.abs().max()) < 1.5 * float(clean_mesh.vertices.abs().max())
    assert bool(torch.isfinite(mesh.vertices).all())


def test_a_giant_gaussian_does_not_stretch_the_grid(sphere, clean_mesh, single_thread):
    g = sphere.clone()
    g.scales[0, 0] = 500.0
    mesh = extract_mesh(g, resolution=48, target_faces=2000, texture=False)
    assert abs(mesh.num_faces - clean_mesh.num_faces) <= 0.1 * clean_mesh.num_faces


def test_clean_objects_lose_nothing():
    """The benchmark scenes (thin fin and rod included) keep every Gaussian."""
    for kind in ("sphere", "torus", "box", "composite"):
        for style in ("surfel", "fuzzy"):
            g = make_scene(kind, n=20000, seed=1, style=style)
            assert bool(_within_object(g).all()), (kind, style)


def test_half_strays_fail_cleanly(sphere):
    """With 3 of 6 Gaussians far away there is no telling object from strays: a clear error, fast."""
    g = sphere.select(torch.arange(sphere.num_gaussians) < 6)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="too few"):
        extract_mesh(_with_strays(g, 1e6), resolution=32, texture=False)
    assert time.perf_counter() - t0 < 10
