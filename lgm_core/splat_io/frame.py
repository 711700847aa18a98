"""The one frame conversion between the LGM frame and the 3DGS frame.

LGM frame (``lgm_core``'s ``Gaussians``): right-handed, +y up, the object's front faces +z.
3DGS frame (COLMAP/OpenCV convention; ComfyUI core's ``SPLAT``, splat files and web viewers):
right-handed, +y down, +z forward. One maps to the other by a 180-degree turn about x,
(x, y, z) -> (x, -y, -z), its own inverse (det +1: no mirror, winding and handedness kept).

Applied to Gaussians: positions are turned, orientations composed with the turn
(q' = q_x180 * q, which keeps a legacy quaternion's norm), scales and opacities are unchanged and
the higher spherical-harmonic bands change sign where their basis function is odd in (y, z)
(exact for every degree up to 3: the turn maps each real SH basis function to +-itself).
"""

from __future__ import annotations

import dataclasses

import torch

from ..gaussians import Gaussians
from ..geometry import quaternion_multiply

_TURN_X180 = (0.0, 1.0, 0.0, 0.0)  # wxyz
_SH_SIGNS = (
    [1.0]
    + [-1.0, -1.0, 1.0]                               # y, z, x
    + [-1.0, 1.0, 1.0, -1.0, 1.0]                     # xy, yz, 3z^2-1, xz, x^2-y^2
    + [-1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]         # degree 3, same order as 3DGS
)
"""Sign of each real SH basis function (3DGS coefficient order) under (x, y, z) -> (x, -y, -z)."""


def turn_x180(gaussians: Gaussians) -> Gaussians:
    """LGM frame <-> 3DGS frame (the same operation both ways; see the module docstring)."""
    g = gaussians
    k = g.sh.shape[-2]
    if k > len(_SH_SIGNS):
        raise ValueError(f"spherical harmonics of degree > 3 are not supported ({k} coefficients)")
    flip = torch.tensor([1.0, -1.0, -1.0], device=g.device, dtype=g.positions.dtype)
    turn = torch.tensor(_TURN_X180, device=g.device, dtype=g.rotations.dtype)
    rotations = quaternion_multiply(turn.expand_as(g.rotations), g.rotations)
    sh = g.sh
    if k > 1:
        signs = torch.tensor(_SH_SIGNS[:k], device=g.device, dtype=g.sh.dtype)
        sh = g.sh * signs[:, None]
    return dataclasses.replace(g, positions=g.positions * flip, rotations=rotations, sh=sh)


lgm_to_3dgs = turn_x180
"""LGM frame -> 3DGS frame."""
threedgs_to_lgm = turn_x180
"""3DGS frame -> LGM frame."""

__all__ = ["turn_x180", "lgm_to_3dgs", "threedgs_to_lgm"]
