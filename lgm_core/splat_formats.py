"""Compact web formats for Gaussian splats (besides the standard 3DGS .ply in :mod:`lgm_core.ply`).

``.splat`` (the de-facto format of web splat viewers): 32 bytes per Gaussian, no header, sorted by
importance (size x opacity, largest first)::

    position  float32 x 3   (3DGS convention: y down, z forward -> LGM (x, y, z) is written (x, -y, -z))
    scale     float32 x 3   linear standard deviations
    colour    uint8   x 4   RGB from the SH DC term, A = opacity (0..255)
    rotation  uint8   x 4   unit quaternion w, x, y, z mapped by q * 128 + 128

Higher SH bands are dropped (viewers of this format show DC colour only). Legacy-checkpoint
Gaussians (``normalized_rotations=False``) are written with normalised quaternions, an approximation.

The format has no header, so reading checks every record (docs/robustness.md): a record with a
NaN/Inf position or scale, a negative scale or rotation bytes that do not encode a unit quaternion
is invalid. Files that start like another format (PLY, glTF, PNG, safetensors ...), have a size
that is not a multiple of 32, are empty, or hold invalid records are rejected with a
``ValueError`` (:class:`SplatError`) saying why; ``on_invalid="drop"`` keeps the valid records of
a file whose records are mostly valid.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .fileio import atomic_write_bytes
from .gaussians import SH_C0, Gaussians, check_finite, describe_invalid, drop_invalid
from .geometry import quaternion_multiply

PathLike = Union[str, os.PathLike]

RECORD = np.dtype([("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4), ("r", "u1", 4)])
_OTHER_FORMATS = {b"ply\n": "a PLY file", b"ply\r\n": "a PLY file", b"glTF": "a glTF (.glb) file",
                  b"\x89PNG\r\n": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"RIFF": "a RIFF (WebP/WAV) file",
                  b"GIF89a": "a GIF image", b"GIF87a": "a GIF image", b"PK\x03\x04": "a zip archive",
                  b"solid ": "an STL file"}
"""Signatures of other formats (at least 4 bytes: a real .splat file starts with a random-looking float)."""
_QUAT_NORM_RANGE = (0.5, 1.5)
"""Decoded rotation bytes of real records are unit quaternions up to 8-bit rounding (norm ~1 +- 0.01)."""
_MAX_INVALID_TO_DROP = 0.5
"""With on_invalid="drop", a file with more invalid records than this fraction is still rejected."""


class SplatError(ValueError):
    """A file that cannot be read as .splat Gaussians."""


_FLIP_YZ = torch.tensor([0.0, 1.0, 0.0, 0.0])  # 180 degrees about x, wxyz


def splat_bytes(gaussians: Gaussians, *, index: int = 0, min_opacity: float = 0.005,
                source: str = "Gaussians") -> bytes:
    """Batch item ``index`` as .splat bytes (see the module docstring for the layout). Raises
    :class:`~lgm_core.gaussians.InvalidGaussiansError` for NaN/Inf values, negative scales or zero
    quaternions (which a reader cannot tell from damage), and ``ValueError`` when no Gaussian is
    left to write (an empty file is refused by :func:`load_splat`)."""
    if not 0.0 <= float(min_opacity) <= 1.0:
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    g = gaussians[index].float().cpu()  # batch of 1, padding dropped
    g = check_finite(g, source, extra=(g.scales < 0).any(-1) | (g.rotations.norm(dim=-1) < 1e-12),
                     extra_label="negative scale or zero-length rotation")
    keep = g.opacities[0, :, 0] >= float(min_opacity)
    pos = g.positions[0][keep] * torch.tensor([1.0, -1.0, -1.0])
    scale = g.scales[0][keep]
    q = g.rotations[0][keep]
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = quaternion_multiply(_FLIP_YZ.expand_as(q), q)
    q = torch.where(q[:, :1] < 0, -q, q)  # canonical sign, w >= 0
    rgb = (g.sh[0][keep][:, 0, :] * SH_C0 + 0.5).clamp(0, 1)
    alpha = g.opacities[0][keep].clamp(0, 1)
    order = torch.argsort(-(scale.prod(-1) * alpha[:, 0]), stable=True)
    n = int(order.numel())
    if n == 0:  # a 0-byte file cannot be told from a failed write: the format cannot hold an empty set
        raise ValueError(f"{source}: no Gaussian to write (none has opacity >= {float(min_opacity)}); "
                         "an empty .splat file would be refused when read")
    rec = np.zeros(n, dtype=RECORD)
    rec["p"] = pos[order].numpy()
    rec["s"] = scale[order].numpy()
    rec["c"] = (torch.cat([rgb, alpha], -1)[order] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    rec["r"] = (q[order] * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    return rec.tobytes()


def save_splat(gaussians: Gaussians, path: PathLike, *, index: int = 0, min_opacity: float = 0.005) -> Path:
    """Write batch item ``index`` as a .splat file (atomically)."""
    data = splat_bytes(gaussians, index=index, min_opacity=min_opacity, source=f"cannot write {os.fspath(path)}")
    atomic_write_bytes(path, data)
    return Path(path)


def load_splat(path: PathLike, *, on_invalid: str = "raise") -> Gaussians:
    """Read a .splat file back (batch of 1; positions/rotations turned back to the LGM frame).

    Raises :class:`SplatError` for files that are not .splat data (see the module docstring) and
    for invalid records; ``on_invalid="drop"`` drops invalid records with a warning instead (still
    rejecting a file where more than half of the records are invalid: that is not .splat data).
    """
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .splat file: {path}")
    raw = Path(path).read_bytes()
    if not raw:
        raise SplatError(f"{path}: the file is empty (a .splat file holds 32 bytes per Gaussian)")
    for magic, what in _OTHER_FORMATS.items():
        if raw.startswith(magic):
            raise SplatError(f"{path}: this is {what}, not a .splat file")
    if len(raw) >= 10 and raw[8:10] == b'{"' and int.from_bytes(raw[:8], "little") < len(raw):
        raise SplatError(f"{path}: this is a safetensors file, not a .splat file")
    if len(raw) % RECORD.itemsize:
        raise SplatError(f"{path}: size {len(raw)} is not a multiple of {RECORD.itemsize} bytes; not a .splat "
                         "file (or a truncated one)")
    rec = np.frombuffer(raw, dtype=RECORD)
    pos = torch.from_numpy(rec["p"].copy()) * torch.tensor([1.0, -1.0, -1.0])
    scales = torch.from_numpy(rec["s"].copy())
    q = (torch.from_numpy(rec["r"].astype(np.float32)) - 128.0) / 128.0
    norm = q.norm(dim=-1)
    bad_rotation = (norm < _QUAT_NORM_RANGE[0]) | (norm > _QUAT_NORM_RANGE[1])
    q = quaternion_multiply(_FLIP_YZ.expand_as(q), q)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    c = torch.from_numpy(rec["c"].astype(np.float32)) / 255.0
    sh = ((c[:, :3] - 0.5) / SH_C0)[:, None, :]
    g = Gaussians(positions=pos[None], scales=scales[None], rotations=q[None], opacities=c[None, :, 3:4], sh=sh[None])
    extra = (bad_rotation | (scales < 0).any(-1))[None]
    label = "negative scale or non-unit rotation"
    if on_invalid == "drop":
        message = describe_invalid(g, extra, label)
        n_bad = int(message.split(" ", 1)[0]) if message else 0
        if n_bad > _MAX_INVALID_TO_DROP * len(rec):
            raise SplatError(f"{path}: does not look like a .splat file: {message}")
        return drop_invalid(g, path, extra=extra, extra_label=label)
    return check_finite(g, path, extra=extra, extra_label=label, error=SplatError,
                        hint="load_splat(..., on_invalid='drop') keeps the valid ones")


__all__ = ["splat_bytes", "save_splat", "load_splat", "SplatError", "RECORD"]
