"""mkkellogg ``.ksplat`` splat files (GaussianSplats3D's SplatBuffer; levels 0-2 read, level 0 written).

Layout (little-endian): a 4096-byte header (``u8`` major = 0, ``u8`` minor version; ``u32`` at 4
max section count, 8 section count, 12 max splat count, 16 splat count; ``u16`` at 20 compression
level; ``f32 x 3`` at 24 scene centre; ``f32`` at 36/40 min/max SH coefficient of level 2), then
one 1024-byte header per section (``u32`` at 0 splat count, 4 max splat count, 8 bucket size,
12 bucket count; ``f32`` at 16 bucket block size; ``u16`` at 20 bucket storage bytes; ``u32`` at 24
compression scale range, 28 storage bytes, 32 full bucket count, 36 partially filled bucket count;
``u16`` at 40 SH degree), then per section: the lengths of partially filled buckets (``u32`` each),
the bucket centres (``f32 x 3`` each) and ``max splat count`` records of

=====  ==================================================  ===================================
level  centre / scale / rotation (wxyz)                     then
=====  ==================================================  ===================================
0      f32 x 3 / f32 x 3 / f32 x 4                          RGBA u8 x 4 (display colour,
1, 2   u16 x 3 bucket-relative / f16 x 3 / f16 x 4          A = opacity), SH (f32 / f16 / u8)
=====  ==================================================  ===================================

Bucket-relative centres: ``(c - range) * block_size / (2 * range) + bucket centre``. SH bands are
skipped when reading (base colour kept); files are written at level 0 with SH degree 0. Axes are
stored as they are (:mod:`lgm_core.splat_io` decides the frame).
"""

from __future__ import annotations

import struct

import numpy as np
import torch

from ..gaussians import SH_C0, Gaussians

HEADER_BYTES = 4096
SECTION_BYTES = 1024
VERSION = (0, 1)
# level -> (centre, scale, rotation, colour, bytes per SH component, default scale range)
_LEVELS = {0: (12, 12, 16, 4, 4, 1), 1: (6, 6, 8, 4, 2, 32767), 2: (6, 6, 8, 4, 1, 32767)}
_SH_COMPONENTS = {0: 0, 1: 9, 2: 24, 3: 45}


class KsplatError(ValueError):
    """Bytes that are not a readable .ksplat file."""


def ksplat_bytes(positions: torch.Tensor, scales: torch.Tensor, rotations: torch.Tensor, opacities: torch.Tensor,
                 rgb: torch.Tensor) -> bytes:
    """Level-0, SH-degree-0 .ksplat bytes for N Gaussians ([N,3], [N,3] linear, [N,4] wxyz,
    [N,1] in [0,1], [N,3] display colour in [0,1]); one section."""
    n = int(positions.shape[0])
    f32 = lambda t: t.detach().cpu().numpy().astype("<f4")  # noqa: E731
    q = rotations.detach().double()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    records = np.zeros(n, dtype=[("c", "<f4", 3), ("s", "<f4", 3), ("r", "<f4", 4), ("col", "u1", 4)])
    records["c"], records["s"], records["r"] = f32(positions), f32(scales), f32(q)
    rgba = torch.cat([rgb.detach().double().reshape(n, 3), opacities.detach().double().reshape(n, 1)], 1)
    records["col"] = (rgba.clamp(0, 1) * 255).round().cpu().numpy().astype(np.uint8)
    header = bytearray(HEADER_BYTES)
    header[0], header[1] = VERSION
    struct.pack_into("<IIII", header, 4, 1, 1, n, n)
    struct.pack_into("<H", header, 20, 0)
    section = bytearray(SECTION_BYTES)
    struct.pack_into("<II", section, 0, n, n)
    struct.pack_into("<I", section, 28, n * records.dtype.itemsize)
    return bytes(header) + bytes(section) + records.tobytes()


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def read_ksplat(data: bytes, source: str = ".ksplat data") -> Gaussians:
    """Gaussians (batch of 1, SH DC only, axes as stored) from .ksplat file bytes."""
    if len(data) < HEADER_BYTES or data[0] != 0 or data[1] < 1:
        raise KsplatError(f"{source}: not a .ksplat file (needs a {HEADER_BYTES}-byte header of version 0.x)")
    max_sections, sections = _u32(data, 4), _u32(data, 8)
    level = struct.unpack_from("<H", data, 20)[0]
    if level not in _LEVELS:
        raise KsplatError(f"{source}: unknown .ksplat compression level {level}")
    if not 0 < sections <= max_sections <= (len(data) - HEADER_BYTES) // SECTION_BYTES:
        raise KsplatError(f"{source}: inconsistent section counts ({sections} of {max_sections})")
    c_bytes, s_bytes, r_bytes, col_bytes, sh_bytes, default_range = _LEVELS[level]
    base = HEADER_BYTES + max_sections * SECTION_BYTES
    parts = []
    for s in range(max_sections):
        h = HEADER_BYTES + s * SECTION_BYTES
        count, capacity, bucket_size, bucket_count = struct.unpack_from("<IIII", data, h)
        block_size = struct.unpack_from("<f", data, h + 16)[0]
        bucket_storage = struct.unpack_from("<H", data, h + 20)[0]
        scale_range = _u32(data, h + 24) or default_range
        full_buckets, partial_buckets = _u32(data, h + 32), _u32(data, h + 36)
        sh_degree = struct.unpack_from("<H", data, h + 40)[0]
        if sh_degree not in _SH_COMPONENTS or count > capacity:
            raise KsplatError(f"{source}: section {s} has an invalid header")
        record = c_bytes + s_bytes + r_bytes + col_bytes + _SH_COMPONENTS[sh_degree] * sh_bytes
        meta = partial_buckets * 4
        buckets_bytes = bucket_storage * bucket_count + meta
        start = base + buckets_bytes
        if start + record * capacity > len(data):
            raise KsplatError(f"{source}: truncated (section {s} ends past the end of the file)")
        if count and s < sections:
            centre_t, float_t = ("<f4", "<f4") if level == 0 else ("<u2", "<f2")
            dtype = np.dtype({"names": ["c", "s", "r", "col"],
                              "formats": [(centre_t, 3), (float_t, 3), (float_t, 4), ("u1", 4)],
                              "offsets": [0, c_bytes, c_bytes + s_bytes, c_bytes + s_bytes + r_bytes],
                              "itemsize": record})
            rec = np.frombuffer(data, dtype, count=count, offset=start)
            centres = rec["c"].astype(np.float64)
            if level > 0:
                if bucket_size == 0 or bucket_count == 0:
                    raise KsplatError(f"{source}: compressed section {s} has no buckets")
                bucket_centres = np.frombuffer(data, "<f4", count=3 * bucket_count,
                                               offset=base + meta).reshape(-1, 3).astype(np.float64)
                index = np.empty(count, np.int64)
                in_full = min(full_buckets * bucket_size, count)
                index[:in_full] = np.arange(in_full) // bucket_size
                if count > in_full:
                    lengths = np.frombuffer(data, "<u4", count=partial_buckets, offset=base).astype(np.int64)
                    index[in_full:] = np.repeat(full_buckets + np.arange(partial_buckets), lengths)[:count - in_full]
                if index.max(initial=0) >= bucket_count:
                    raise KsplatError(f"{source}: section {s} refers to a missing bucket")
                centres = (centres - scale_range) * (block_size / 2.0 / scale_range) + bucket_centres[index]
            colour = rec["col"].astype(np.float64) / 255.0
            parts.append((centres, rec["s"].astype(np.float64), rec["r"].astype(np.float64), colour))
        base += record * capacity + buckets_bytes
    if not parts:
        raise KsplatError(f"{source}: the file holds no Gaussians")
    centres, scales, rots, colour = (np.concatenate([p[i] for p in parts]) for i in range(4))
    rots = rots / np.clip(np.linalg.norm(rots, axis=1, keepdims=True), 1e-12, None)
    sh = ((colour[:, :3] - 0.5) / SH_C0)[:, None, :]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    return Gaussians(positions=t(centres), scales=t(scales), rotations=t(rots), opacities=t(colour[:, 3:4]),
                     sh=t(sh))


__all__ = ["ksplat_bytes", "read_ksplat", "KsplatError"]
