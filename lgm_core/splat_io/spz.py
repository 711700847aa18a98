"""Niantic ``.spz`` splat files (gzip-compressed, quantised; versions 2 and 3 read, version 2 written;
SH degree 0-3 read and written).

Layout after gunzip: a 16-byte header (``<I`` magic ``0x5053474E`` "NGSP", ``<I`` version, ``<I``
count, ``u8`` SH degree, ``u8`` fractional bits of the fixed-point positions, ``u8`` flags, ``u8``
reserved), then one array per attribute, each over all Gaussians:

====================  =========================================================================
positions  9 B each   x, y, z as signed 24-bit little-endian fixed point (``value / 2**bits``)
alphas     1 B        opacity * 255
colours    3 B        DC coefficient * 0.15 * 255 + 127.5 (i.e. ``(rgb - 0.5) / C0 * 0.15``)
scales     3 B        (ln(scale) + 10) * 16
rotations  3 B (v2)   x, y, z of the unit quaternion with w >= 0, as (q + 1) * 127.5
           4 B (v3)   "smallest three": 2 bits index of the largest component, 3 x (sign bit +
                      9-bit magnitude of |q| / sqrt(1/2)) for the others
SH         3*D B      the D = 3, 8, 15 higher SH coefficients of degree 1, 2, 3, coefficient-major
                      with the colour channel fastest (r, g, b of coefficient 1, then of 2, ...),
                      each as ``value * 128 + 128`` (read back as ``(byte - 128) / 128``)
====================  =========================================================================

Axes are stored as they are (this module never turns them; :mod:`lgm_core.splat_io` decides the
frame). Quantisation: positions to 2**-12 (about 0.24 mm at unit scale), colours and opacities to
1/255, log-scales to 1/16, quaternion components to about 1/127, higher SH coefficients to 1/128
(clamped to [-1, 127/128]). LGM itself predicts SH degree 0 (DC colour); higher bands come from splats
made elsewhere (a 3DGS ``.ply``, another tool's ``.spz``).
"""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import torch

from ..gaussians import Gaussians

MAGIC = 0x5053474E
WRITE_VERSION = 2
FRACTIONAL_BITS = 12
_COLOUR_SCALE = 0.15
_SH_REST = {0: 0, 1: 3, 2: 8, 3: 15}
"""SH degree -> number of higher coefficients per colour channel stored after the rotations."""


class SpzError(ValueError):
    """Bytes that are not a readable .spz file."""


def spz_bytes(positions: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor, opacities: torch.Tensor,
              sh: torch.Tensor) -> bytes:
    """Version-2 .spz bytes for one set of N Gaussians ([N,3], [N,3] linear, [N,4] wxyz, [N,1] in [0,1],
    SH coefficients [N,K,3] with K = 1, 4, 9 or 16 — or DC only as [N,3]). Positions must fit the 24-bit
    fixed-point range (|x| < 2048)."""
    n = int(positions.shape[0])
    sh = sh.detach().double().cpu()
    if n:
        sh = sh.reshape(n, -1, 3)
    elif sh.dim() == 2:  # no Gaussians, DC only: reshape cannot infer K from 0 elements
        sh = sh.reshape(0, 1, 3)
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(int(sh.shape[1]))
    if degree is None:
        raise ValueError(f".spz holds SH degree 0-3 (K = 1, 4, 9, 16 coefficients), got K = {sh.shape[1]}")
    xyz = positions.detach().double().cpu().numpy()
    fixed = np.round(xyz * (1 << FRACTIONAL_BITS))
    if n and np.abs(fixed).max() >= (1 << 23):
        raise ValueError(f".spz positions must lie within +-{(1 << 23) / (1 << FRACTIONAL_BITS):.0f} units")
    u = (fixed.astype(np.int64) & 0xFFFFFF).astype(np.uint32)
    pos = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], -1).astype(np.uint8).reshape(n, 9)
    alpha = np.clip(np.round(opacities.detach().double().cpu().numpy().reshape(n) * 255), 0, 255).astype(np.uint8)
    dc = sh[:, 0, :].numpy()
    colour = np.clip(np.round(dc * _COLOUR_SCALE * 255 + 127.5), 0, 255).astype(np.uint8)
    log_s = np.log(np.clip(scales.detach().double().cpu().numpy(), 1e-30, None))
    scale = np.clip(np.round((log_s + 10.0) * 16.0), 0, 255).astype(np.uint8)
    q = rotations.detach().double().cpu().numpy()
    q = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
    q = np.where(q[:, :1] < 0, -q, q)  # w >= 0: w is implied by the other three
    rot = np.clip(np.round((q[:, 1:] + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rest = np.clip(np.round(sh[:, 1:, :].numpy() * 128.0 + 128.0), 0, 255).astype(np.uint8)  # [N, D, 3]
    header = struct.pack("<IIIBBBB", MAGIC, WRITE_VERSION, n, degree, FRACTIONAL_BITS, 0, 0)
    body = (header + pos.tobytes() + alpha.tobytes() + colour.tobytes() + scale.tobytes() + rot.tobytes()
            + rest.tobytes())
    return gzip.compress(body, compresslevel=6, mtime=0)


def _take(raw: bytes, offset: int, size: int, what: str) -> tuple[np.ndarray, int]:
    if offset + size > len(raw):
        raise SpzError(f"truncated .spz data: the {what} array ends past the end of the file")
    return np.frombuffer(raw, np.uint8, count=size, offset=offset), offset + size


def _smallest_three(words: np.ndarray) -> np.ndarray:
    """Decode v3 rotations (uint32 per Gaussian) -> wxyz [N,4]."""
    n = words.shape[0]
    largest = (words >> 30) & 3
    comps = np.zeros((n, 4), np.float64)  # x, y, z, w (the format's order)
    rest = words.astype(np.int64)
    total = np.zeros(n)
    for c in (3, 2, 1, 0):
        active = largest != c
        mag = (rest & 0x1FF) / 0x1FF * math.sqrt(0.5)
        val = np.where((rest >> 9) & 1, -mag, mag)
        rest = np.where(active, rest >> 10, rest)
        comps[active, c] = val[active]
        total += np.where(active, val * val, 0.0)
    comps[np.arange(n), largest] = np.sqrt(np.clip(1.0 - total, 0.0, None))
    return np.stack([comps[:, 3], comps[:, 0], comps[:, 1], comps[:, 2]], -1)


def read_spz(data: bytes, source: str = ".spz data") -> Gaussians:
    """Gaussians (batch of 1, SH of the file's degree 0-3, axes as stored) from .spz file bytes."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SpzError(f"{source}: not a gzip-compressed .spz file ({exc})") from None
    if len(raw) < 16:
        raise SpzError(f"{source}: too short for a .spz header")
    magic, version, n, sh_degree, frac_bits, _flags, _ = struct.unpack_from("<IIIBBBB", raw, 0)
    if magic != MAGIC:
        raise SpzError(f"{source}: not a .spz file (magic {magic:#x})")
    if version not in (2, 3):
        raise SpzError(f"{source}: .spz version {version} is not supported (2 and 3 are)")
    if sh_degree > 3:
        raise SpzError(f"{source}: SH degree {sh_degree} is out of range (0-3)")
    if n == 0:
        raise SpzError(f"{source}: the file holds no Gaussians")
    off = 16
    pos, off = _take(raw, off, 9 * n, "position")
    b = pos.reshape(n, 3, 3).astype(np.int64)
    v = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
    v = np.where(v & 0x800000, v - (1 << 24), v)
    xyz = v / float(1 << frac_bits)
    alpha, off = _take(raw, off, n, "alpha")
    colour, off = _take(raw, off, 3 * n, "colour")
    scale, off = _take(raw, off, 3 * n, "scale")
    if version == 2:
        rot, off = _take(raw, off, 3 * n, "rotation")
        xyz_q = rot.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.clip(1.0 - (xyz_q ** 2).sum(1), 0.0, None))
        q = np.concatenate([w[:, None], xyz_q], 1)
    else:
        rot, off = _take(raw, off, 4 * n, "rotation")
        q = _smallest_three(rot.reshape(n, 4).copy().view("<u4")[:, 0])
    q = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
    dc = (colour.reshape(n, 3).astype(np.float64) - 127.5) / (255 * _COLOUR_SCALE)
    dim = _SH_REST[sh_degree]
    rest, off = _take(raw, off, 3 * dim * n, "SH")
    sh = np.concatenate([dc.reshape(n, 1, 3), (rest.reshape(n, dim, 3).astype(np.float64) - 128.0) / 128.0], 1)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    return Gaussians(positions=t(xyz), scales=t(np.exp(scale.reshape(n, 3) / 16.0 - 10.0)), rotations=t(q),
                     opacities=t(alpha.reshape(n, 1) / 255.0), sh=t(sh))


__all__ = ["spz_bytes", "read_spz", "SpzError"]
