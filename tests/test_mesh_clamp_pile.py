"""Mesh extraction ignores Gaussians piled on LGM's position clamp (issue 13): LGM clamps centres
to [-1, 1]^3, a small model parks stray Gaussians there (e.g. at y = 1), and that pile must not
become a part of the mesh unless asked for (``keep_clamped``)."""

from __future__ import annotations

import logging

import pytest
import torch

from lgm_core.mesh import extract_mesh
from lgm_core.mesh.extract import _on_position_clamp
from lgm_core.mesh.synthetic import make_scene

OPTS = dict(resolution=48, target_faces=2000, texture=False)
PILE = 400


@pytest.fixture(scope="module")
def sphere():
    return make_scene("sphere", n=6000, seed=0)


def _with_clamp_pile(g, k: int = PILE):
    """The first ``k`` Gaussians moved onto the y = 1 face of the clamp box, in a dense opaque patch."""
    h = g.clone()
    gen = torch.Generator().manual_seed(0)
    xz = (torch.rand(k, 2, generator=gen) - 0.5) * 0.3
    h.positions[0, :k] = torch.stack([xz[:, 0], torch.ones(k), xz[:, 1]], dim=-1)
    h.opacities[0, :k] = 0.9
    h.scales[0, :k] = 0.02
    return h


def test_scene_fits_the_clamp_box(sphere):
    assert float(sphere.positions.abs().max()) < 0.9  # the object itself never reaches the clamp
    assert not bool(_on_position_clamp(sphere).any())


def test_clamp_pile_is_ignored_and_counted(sphere, caplog, single_thread):
    clean = extract_mesh(sphere.select(torch.arange(sphere.num_gaussians) >= PILE), **OPTS)  # without the pile
    messages = []
    with caplog.at_level(logging.WARNING, logger="lgm_core"):
        mesh = extract_mesh(_with_clamp_pile(sphere), progress=lambda m, f: messages.append(m), **OPTS)
    assert f"ignored {PILE} of 6000 visible Gaussians" in caplog.text
    assert f"{PILE} piled on the position clamp" in caplog.text
    assert any(f"ignored {PILE} of 6000" in m for m in messages)
    assert float(mesh.vertices[:, 1].max()) < float(clean.vertices[:, 1].max()) + 0.02
    assert abs(mesh.num_faces - clean.num_faces) <= 0.02 * clean.num_faces

    kept = extract_mesh(_with_clamp_pile(sphere), keep_clamped=True, **OPTS)
    assert float(kept.vertices[:, 1].max()) > 0.95  # the pile is a part of the mesh when kept


def test_unclamped_scenes_are_left_alone(sphere):
    """Scenes not inside [-1, 1]^3 (3DGS captures, unnormalised objects) have no clamp to pile on."""
    big = sphere.clone()
    big.positions[0] *= 3.0
    big.positions[0, :10, 1] = 1.0  # centres at y = 1 by chance, inside a larger scene
    assert not bool(_on_position_clamp(big).any())
    tail = _with_clamp_pile(sphere)
    assert int(_on_position_clamp(tail).sum()) == PILE
