"""3D Gaussian splatting .ply files (lgm_spec §8).

Writing reproduces LGM's ``save_ply`` byte for byte: binary little-endian PLY 1.0, one ``vertex``
element of float32 properties ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3`` (+ ``f_rest_*`` when
the Gaussians carry higher-order SH), opacity stored as a logit (clamped to [1e-6, 1 - 1e-6] in
float32), scales as ``log(scale + 1e-8)``, quaternions (w, x, y, z) as they are, y-up LGM frame.

Reading accepts that and any standard 3DGS file: ascii, binary little- or big-endian, any scalar
property types, extra properties (``nx ny nz`` ...), ``f_rest_*`` of SH degree 1-3, other elements
before or after ``vertex``. Malformed or truncated files raise :class:`PlyError` (a ``ValueError``)
with a message saying what is wrong; the declared vertex count is checked against the file size
before anything is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .fileio import atomic_write_bytes  # noqa: F401  (re-exported)
from .gaussians import Gaussians

MIN_OPACITY = 0.005
MAX_HEADER_BYTES = 1 << 16

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_BASE_FIELDS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]

PathLike = Union[str, os.PathLike]


class PlyError(ValueError):
    """A .ply file that cannot be read as 3D Gaussians."""


# ---------------------------------------------------------------------- writing
def ply_bytes(gaussians: Gaussians, *, min_opacity: float = MIN_OPACITY, index: int = 0) -> bytes:
    """The .ply file content for batch item ``index`` (see module docstring)."""
    g = gaussians[index].detach().to("cpu", torch.float32)
    opacity = g.opacities[0]
    keep = opacity[:, 0] >= min_opacity
    pos = g.positions[0][keep]
    opacity = opacity[keep]
    scales = g.scales[0][keep]
    rots = g.rotations[0][keep]
    sh = g.sh[0][keep]  # [N, K, 3]
    eps = 1e-6
    opacity = opacity.clamp(eps, 1 - eps)
    opacity_logit = torch.log(opacity / (1 - opacity))
    log_scales = torch.log(scales + 1e-8)
    f_dc = sh[:, 0, :]
    columns = [pos, f_dc, opacity_logit, log_scales, rots]
    names = list(_BASE_FIELDS)
    k = sh.shape[1]
    if k > 1:  # standard 3DGS layout: channel-major [N, 3, K-1] flattened
        f_rest = sh[:, 1:, :].transpose(1, 2).reshape(sh.shape[0], -1)
        columns.insert(2, f_rest)
        names[6:6] = [f"f_rest_{i}" for i in range(f_rest.shape[1])]
    data = torch.cat(columns, dim=1).contiguous().numpy().astype("<f4", copy=False)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {data.shape[0]}"]
    header += [f"property float {n}" for n in names]
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + data.tobytes()


def save_ply(gaussians: Gaussians, path: PathLike, *, min_opacity: float = MIN_OPACITY, index: int = 0) -> Path:
    """Write batch item ``index`` of ``gaussians`` to ``path`` atomically; returns the path."""
    atomic_write_bytes(path, ply_bytes(gaussians, min_opacity=min_opacity, index=index))
    return Path(path)


# ---------------------------------------------------------------------- reading
def _parse_header(raw: bytes, path: str) -> Tuple[str, List[Tuple[str, int, list]], int]:
    """Returns (format, [(element name, count, [(prop name, dtype or ('list', ...))])], data offset)."""
    if not raw.startswith(b"ply"):
        raise PlyError(f"{path}: not a PLY file (it does not start with 'ply')")
    end = raw.find(b"end_header", 0, MAX_HEADER_BYTES)
    if end < 0:
        raise PlyError(f"{path}: no 'end_header' in the first {MAX_HEADER_BYTES} bytes (truncated or not a PLY file)")
    nl = raw.find(b"\n", end)
    if nl < 0:
        raise PlyError(f"{path}: truncated right after 'end_header'")
    offset = nl + 1
    try:
        text = raw[:end].decode("ascii")
    except UnicodeDecodeError:
        raise PlyError(f"{path}: the PLY header is not ASCII text") from None
    fmt = None
    elements: List[Tuple[str, int, list]] = []
    for lineno, line in enumerate(text.replace("\r", "").split("\n")[1:], start=2):
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if len(parts) != 3 or parts[1] not in ("ascii", "binary_little_endian", "binary_big_endian"):
                raise PlyError(f"{path}: unsupported format line {line!r}")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                raise PlyError(f"{path}: bad element line {line!r} (header line {lineno})")
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise PlyError(f"{path}: property before any element (header line {lineno})")
            if len(parts) == 5 and parts[1] == "list":
                if parts[2] not in _PLY_TYPES or parts[3] not in _PLY_TYPES:
                    raise PlyError(f"{path}: unknown list property types in {line!r}")
                elements[-1][2].append((parts[4], ("list", _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]])))
            elif len(parts) == 3 and parts[1] in _PLY_TYPES:
                elements[-1][2].append((parts[2], _PLY_TYPES[parts[1]]))
            else:
                raise PlyError(f"{path}: unsupported property line {line!r} (header line {lineno})")
        else:
            raise PlyError(f"{path}: unexpected header line {line!r} (header line {lineno})")
    if fmt is None:
        raise PlyError(f"{path}: the header has no 'format' line")
    return fmt, elements, offset


def _read_vertex_table(path: str) -> Tuple[dict, int]:
    raw = Path(path).read_bytes()
    fmt, elements, offset = _parse_header(raw, path)
    names = [e[0] for e in elements]
    if "vertex" not in names:
        raise PlyError(f"{path}: no 'vertex' element (found {names or 'none'})")
    vi = names.index("vertex")
    _, count, props = elements[vi]
    if any(isinstance(t, tuple) for _, t in props):
        raise PlyError(f"{path}: list properties in the vertex element are not supported for Gaussians")
    prop_names = [n for n, _ in props]
    if len(set(prop_names)) != len(prop_names):
        raise PlyError(f"{path}: duplicate vertex property names")

    if fmt == "ascii":
        body = raw[offset:].decode("ascii", errors="replace").split("\n")
        rows = [ln for ln in body if ln.strip()]
        skip = sum(e[1] for e in elements[:vi])
        if len(rows) < skip + count:
            raise PlyError(f"{path}: truncated: the header declares {count} vertices but only "
                           f"{max(len(rows) - skip, 0)} vertex lines follow")
        values = np.empty((count, len(props)), dtype=np.float64)
        for i, ln in enumerate(rows[skip:skip + count]):
            tokens = ln.split()
            if len(tokens) != len(props):
                raise PlyError(f"{path}: vertex line {i + 1} has {len(tokens)} values, expected {len(props)}")
            try:
                values[i] = [float(t) for t in tokens]
            except ValueError:
                raise PlyError(f"{path}: vertex line {i + 1} holds a non-numeric value") from None
        return {n: values[:, j].astype(np.float32) for j, n in enumerate(prop_names)}, count

    endian = "<" if fmt == "binary_little_endian" else ">"
    for name, n, eprops in elements[:vi]:
        if any(isinstance(t, tuple) for _, t in eprops):
            raise PlyError(f"{path}: element {name!r} before 'vertex' has list properties; cannot locate the vertices")
        offset += n * int(sum(np.dtype(t).itemsize for _, t in eprops))
    dtype = np.dtype([(n, endian + t) for n, t in props])
    need = count * dtype.itemsize
    have = len(raw) - offset
    if have < need:
        raise PlyError(f"{path}: truncated: the header declares {count} vertices ({need} bytes) "
                       f"but only {max(have, 0)} bytes follow the header")
    table = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return {n: table[n].astype(np.float32) for n in prop_names}, count


def load_ply(path: PathLike, *, normalized_rotations: Optional[bool] = None) -> Gaussians:
    """Read a 3DGS .ply into :class:`Gaussians` (batch 1, float32, CPU).

    Opacity logits -> sigmoid, log-scales -> exp (no 1e-8 correction, as the original),
    ``f_dc_*``/``f_rest_*`` -> ``sh`` [1, N, K, 3]. Quaternions keep their stored values when
    already unit length (so LGM files round-trip exactly); otherwise:

    * ``normalized_rotations=None`` (auto): files whose quaternions are all tiny (norm < 0.1, the
      signature of legacy pre-fix LGM checkpoints, lgm_spec §2.2) are kept raw and flagged
      ``normalized_rotations=False``; any other file gets its quaternions normalised (standard 3DGS
      semantics).
    * ``True``: always normalise. ``False``: keep raw and flag as legacy.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .ply file: {path}")
    cols, count = _read_vertex_table(path)
    missing = [n for n in _BASE_FIELDS if n not in cols]
    if missing:
        raise PlyError(f"{path}: not a Gaussian-splat .ply: missing vertex properties {', '.join(missing)}")
    rest_names = sorted((n for n in cols if n.startswith("f_rest_")), key=lambda n: int(n[7:]) if n[7:].isdigit() else -1)
    n_rest = len(rest_names)
    degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(n_rest)
    if degree is None or rest_names != [f"f_rest_{i}" for i in range(n_rest)]:
        raise PlyError(f"{path}: {n_rest} f_rest_* properties do not form SH degree 1-3 (expected 9, 24 or 45, numbered from 0)")

    def stack(names):
        return torch.from_numpy(np.stack([cols[n] for n in names], axis=1)) if count else torch.zeros(0, len(names))

    pos = stack(["x", "y", "z"])
    if not bool(torch.isfinite(pos).all()):
        raise PlyError(f"{path}: vertex positions contain NaN or infinity")
    opacity = torch.sigmoid(stack(["opacity"]))
    scales = torch.exp(stack(["scale_0", "scale_1", "scale_2"]))
    rots = stack(["rot_0", "rot_1", "rot_2", "rot_3"])
    sh = stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :]
    if degree:
        rest = stack(rest_names).reshape(count, 3, n_rest // 3).transpose(1, 2)
        sh = torch.cat([sh, rest], dim=1)

    norms = rots.norm(dim=-1)
    if normalized_rotations is None:
        normalized_rotations = not (count > 0 and bool((norms < 0.1).all()))
    if normalized_rotations and count and bool(((norms - 1).abs() > 1e-4).any()):
        rots = rots / norms.clamp_min(1e-12)[:, None]
    return Gaussians(pos[None], scales[None], rots[None], opacity[None], sh[None].contiguous(),
                     normalized_rotations=normalized_rotations)
