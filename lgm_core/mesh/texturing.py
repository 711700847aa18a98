"""Texture lookups and colour-space helpers for :class:`~lgm_core.mesh.Mesh` data.

Conventions: UVs in [0, 1] with (0, 0) at the bottom-left of the image (OBJ/OpenGL), textures
[H, W, 3] float RGB in [0, 1] with row 0 at the top. ``Mesh`` colours (texture and vertex colours)
are display (sRGB-encoded) values; glTF's ``COLOR_0`` is linear, hence the two transfer functions.
"""

from __future__ import annotations

import numpy as np
import torch


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` [H, W, 3] at ``uv`` [N, 2] (OBJ convention) -> RGB [N, 3]."""
    tex = texture.float().permute(2, 0, 1)[None]
    grid = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2], dim=-1)[None, None]
    out = torch.nn.functional.grid_sample(tex, grid.to(tex), mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, :, 0].T.contiguous()


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1)."""
    c = c.clamp(0, 1)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] -> sRGB-encoded values (inverse of :func:`srgb_to_linear`)."""
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float values in [0, 1] -> uint8 array (rounded)."""
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
