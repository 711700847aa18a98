"""lgm_core.splat_formats: the .splat web format written by LGM Save Splat (no ComfyUI needed)."""

from __future__ import annotations

import numpy as np
import torch

from lgm_core.mesh.synthetic import make_scene
from lgm_core.splat_formats import load_splat, save_splat, splat_bytes


def test_splat_layout_and_round_trip(tmp_path):
    g = make_scene("torus", n=500, seed=3)
    raw = splat_bytes(g, min_opacity=0.0)
    assert len(raw) == 32 * 500
    rec = np.frombuffer(raw, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    importance = rec["s"].prod(1) * rec["c"][:, 3]
    assert np.all(np.diff(importance.astype(np.float64)) <= 1e-3)  # largest first
    back = load_splat(save_splat(g, tmp_path / "t.splat", min_opacity=0.0))
    # same set of Gaussians: compare after sorting by position
    a = g.positions[0][torch.argsort(g.positions[0][:, 0])]
    b = back.positions[0][torch.argsort(back.positions[0][:, 0])]
    assert torch.allclose(a, b, atol=1e-6)
    # rotations survive the y-down flip and 8-bit quantisation (up to sign)
    order_a = torch.argsort(g.positions[0][:, 0])
    order_b = torch.argsort(back.positions[0][:, 0])
    qa, qb = g.rotations[0][order_a], back.rotations[0][order_b]
    qa = qa / qa.norm(dim=-1, keepdim=True)
    assert float((qa * qb).sum(-1).abs().min()) > 0.98
    rgb_a, rgb_b = g.rgb[0][order_a].clamp(0, 1), back.rgb[0][order_b]
    assert float((rgb_a - rgb_b).abs().max()) < 1 / 255 + 1e-6


def test_splat_file_is_y_down(tmp_path):
    g = make_scene("sphere", n=200, seed=0)
    g.positions = g.positions + torch.tensor([0.0, 0.5, 0.25])
    rec = np.frombuffer(splat_bytes(g, min_opacity=0.0), dtype=[("p", "<f4", 3), ("rest", "u1", 20)])
    centre = rec["p"].mean(0)
    assert centre[1] < -0.4 and centre[2] < -0.2  # (x, y, z) -> (x, -y, -z)
