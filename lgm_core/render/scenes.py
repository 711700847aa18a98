"""Synthetic Gaussian scenes for tests, benchmarks and demos (no data files needed)."""

from __future__ import annotations

import math

import torch

from ..gaussians import Gaussians


def blob_scene(n: int = 65536, seed: int = 0, device="cpu") -> Gaussians:
    """An LGM-like object of ``n`` Gaussians (batch 1): centres in a lumpy unit-ish blob (mostly
    near its surface, like LGM output), scales 0.005-0.02 (log-uniform, anisotropic), random unit
    quaternions, opacities spread over [0.05, 1] with many near 1, smooth colours."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    # lumpy radius: a few low-frequency bumps, most points near the surface, some inside
    bumps = 0.12 * torch.sin(3 * d[:, 0]) * torch.cos(2 * d[:, 1]) + 0.08 * torch.sin(4 * d[:, 2] + 1.0)
    depth = torch.rand(n, generator=g) ** 4 * 0.5
    pos = d * (0.55 + bumps - depth)[:, None] * torch.tensor([1.0, 0.85, 0.8])
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.005), math.log(0.02), generator=g))
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    u = torch.rand(n, 1, generator=g)
    opac = torch.where(u < 0.6, 0.9 + 0.1 * torch.rand(n, 1, generator=g), 0.05 + 0.85 * torch.rand(n, 1, generator=g))
    rgb = 0.5 + 0.35 * torch.stack([torch.sin(3 * pos[:, 0] + 0.5), torch.sin(3 * pos[:, 1] + 2.0),
                                    torch.cos(3 * pos[:, 2])], dim=-1)
    rgb = (rgb + 0.05 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    return Gaussians.from_rgb(pos[None], scales[None], quats[None], opac[None], rgb[None]).to(device)


def axis_markers(radius: float = 0.08, offset: float = 0.5, n_per_blob: int = 1) -> Gaussians:
    """Three opaque isotropic blobs: red at +x, green at +y, blue at +z (``offset`` from the origin).
    For orientation tests: from the default front camera (on +z) red is right of centre, green
    above centre, blue in the centre (closest to the camera)."""
    pos = torch.tensor([[offset, 0, 0], [0, offset, 0], [0, 0, offset]], dtype=torch.float32)
    rgb = torch.eye(3)
    pos = pos.repeat_interleave(n_per_blob, 0)
    rgb = rgb.repeat_interleave(n_per_blob, 0)
    n = pos.shape[0]
    scales = torch.full((n, 3), radius)
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4).clone()
    opac = torch.ones(n, 1)
    return Gaussians.from_rgb(pos[None], scales[None], quats[None], opac[None], rgb[None])
