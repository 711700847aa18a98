"""Compact web formats for Gaussian splats (besides the standard 3DGS .ply in :mod:`lgm_core.ply`).

``.splat`` (the de-facto format of web splat viewers): 32 bytes per Gaussian, no header, sorted by
importance (size x opacity, largest first)::

    position  float32 x 3   (3DGS convention: y down, z forward -> LGM (x, y, z) is written (x, -y, -z))
    scale     float32 x 3   linear standard deviations
    colour    uint8   x 4   RGB from the SH DC term, A = opacity (0..255)
    rotation  uint8   x 4   unit quaternion w, x, y, z mapped by q * 128 + 128

Higher SH bands are dropped (viewers of this format show DC colour only). Legacy-checkpoint
Gaussians (``normalized_rotations=False``) are written with normalised quaternions, an approximation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .gaussians import SH_C0, Gaussians
from .ply import atomic_write_bytes

PathLike = Union[str, os.PathLike]

_FLIP_YZ = torch.tensor([0.0, 1.0, 0.0, 0.0])  # 180 degrees about x, wxyz


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


def splat_bytes(gaussians: Gaussians, *, index: int = 0, min_opacity: float = 0.005) -> bytes:
    """Batch item ``index`` as .splat bytes (see the module docstring for the layout)."""
    g = gaussians[index].float().cpu()  # batch of 1, padding dropped
    keep = g.opacities[0, :, 0] >= float(min_opacity)
    pos = g.positions[0][keep] * torch.tensor([1.0, -1.0, -1.0])
    scale = g.scales[0][keep]
    q = g.rotations[0][keep]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = _quat_mul(_FLIP_YZ.expand_as(q), q)
    q = torch.where(q[:, :1] < 0, -q, q)  # canonical sign, w >= 0
    rgb = (g.sh[0][keep][:, 0, :] * SH_C0 + 0.5).clamp(0, 1)
    alpha = g.opacities[0][keep].clamp(0, 1)
    order = torch.argsort(-(scale.prod(-1) * alpha[:, 0]), stable=True)
    n = int(order.numel())
    rec = np.zeros(n, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    rec["p"] = pos[order].numpy()
    rec["s"] = scale[order].numpy()
    rec["c"] = (torch.cat([rgb, alpha], -1)[order] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    rec["r"] = (q[order] * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    return rec.tobytes()


def save_splat(gaussians: Gaussians, path: PathLike, *, index: int = 0, min_opacity: float = 0.005) -> Path:
    """Write batch item ``index`` as a .splat file (atomically)."""
    atomic_write_bytes(path, splat_bytes(gaussians, index=index, min_opacity=min_opacity))
    return Path(path)


def load_splat(path: PathLike) -> Gaussians:
    """Read a .splat file back (batch of 1; positions/rotations turned back to the LGM frame)."""
    raw = Path(path).read_bytes()
    if len(raw) % 32:
        raise ValueError(f"{path}: size {len(raw)} is not a multiple of 32 bytes; not a .splat file")
    rec = np.frombuffer(raw, dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
    pos = torch.from_numpy(rec["p"].copy()) * torch.tensor([1.0, -1.0, -1.0])
    q = (torch.from_numpy(rec["r"].astype(np.float32)) - 128.0) / 128.0
    q = _quat_mul(_FLIP_YZ.expand_as(q), q)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    c = torch.from_numpy(rec["c"].astype(np.float32)) / 255.0
    sh = ((c[:, :3] - 0.5) / SH_C0)[:, None, :]
    return Gaussians(positions=pos[None], scales=torch.from_numpy(rec["s"].copy())[None], rotations=q[None],
                     opacities=c[None, :, 3:4], sh=sh[None])


__all__ = ["splat_bytes", "save_splat", "load_splat"]
