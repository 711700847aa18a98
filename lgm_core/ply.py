"""3D Gaussian splatting .ply files (docs/conventions.md#ply-files).

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .fileio import atomic_write_bytes
from .gaussians import Gaussians, check_finite, drop_invalid

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
def _check_min_opacity(min_opacity: float) -> float:
    value = float(min_opacity)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    return value


def _unwritable(g: Gaussians) -> torch.Tensor:
    """[1, N] bool: Gaussians whose file form would not load back (log of a negative scale is NaN;
    a zero quaternion of a normalised set has no rotation)."""
    bad = (g.scales < 0).any(-1)
    if g.normalized_rotations:
        bad |= g.rotations.norm(dim=-1) < 1e-12
    return bad


def ply_bytes(gaussians: Gaussians, *, min_opacity: float = MIN_OPACITY, index: int = 0,
              source: str = "Gaussians") -> bytes:
    """The .ply file content for batch item ``index`` (see module docstring). Raises
    :class:`~lgm_core.gaussians.InvalidGaussiansError` for NaN/Inf values, negative scales or zero
    quaternions (``source`` names the set in the message), so a written file always loads."""
    min_opacity = _check_min_opacity(min_opacity)
    g = gaussians[index].detach().to("cpu", torch.float32)
    g = check_finite(g, source, extra=_unwritable(g), extra_label="negative scale or zero-length rotation")
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
    data = ply_bytes(gaussians, min_opacity=min_opacity, index=index, source=f"cannot write {os.fspath(path)}")
    atomic_write_bytes(path, data)
    return Path(path)


# ---------------------------------------------------------------------- reading
_COUNT_RE = re.compile(r"[0-9]{1,15}")
_VERSION_RE = re.compile(r"1(\.0*)?")
_ASCII_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.I)
_FLOAT_TYPES = ("f4", "f8")


@dataclass
class _Element:
    name: str
    count: int
    props: List[Tuple[str, object]]  # (name, numpy type code) or (name, ("list", count type, item type))

    @property
    def has_lists(self) -> bool:
        return any(isinstance(t, tuple) for _, t in self.props)

    def row_bytes(self) -> int:
        return int(sum(np.dtype(t).itemsize for _, t in self.props))


def _parse_header(f, path: str) -> Tuple[str, List[_Element], int]:
    """Read the header from the open binary file ``f`` -> (format, elements, data offset).

    The header ends at the first line that is exactly ``end_header`` (comments mentioning it do
    not count) within :data:`MAX_HEADER_BYTES`."""
    raw = f.read(MAX_HEADER_BYTES)
    first = raw.split(b"\n", 1)[0].rstrip(b"\r")
    if first != b"ply":
        raise PlyError(f"{path}: not a PLY file (it does not start with a 'ply' line)")
    fmt = None
    elements: List[_Element] = []
    pos = 0
    lineno = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            where = "the file ends" if len(raw) < MAX_HEADER_BYTES else f"the first {MAX_HEADER_BYTES} bytes end"
            raise PlyError(f"{path}: {where} before the 'end_header' line (truncated or not a PLY file)")
        line_bytes = raw[pos:nl].rstrip(b"\r")
        pos = nl + 1
        lineno += 1
        if lineno == 1:
            continue
        line = line_bytes.decode("latin-1")
        parts = line.split()
        if parts[:1] == ["end_header"] and len(parts) == 1:
            break
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if not line.isascii():
            raise PlyError(f"{path}: header line {lineno} is not ASCII text")
        if parts[0] == "format":
            if fmt is not None:
                raise PlyError(f"{path}: a second 'format' line (header line {lineno})")
            if len(parts) != 3 or parts[1] not in ("ascii", "binary_little_endian", "binary_big_endian") \
                    or not _VERSION_RE.fullmatch(parts[2]):
                raise PlyError(f"{path}: unsupported format line {line!r} (expected e.g. 'format "
                               "binary_little_endian 1.0')")
            fmt = parts[1]
        elif parts[0] == "element":
            if len(parts) != 3:
                raise PlyError(f"{path}: bad element line {line!r} (header line {lineno})")
            if not _COUNT_RE.fullmatch(parts[2]):
                shown = parts[2] if len(parts[2]) <= 24 else f"{parts[2][:12]}... ({len(parts[2])} characters)"
                raise PlyError(f"{path}: element {parts[1]!r} has an invalid count {shown} "
                               f"(header line {lineno}; expected a non-negative integer below 10^15)")
            if any(e.name == parts[1] for e in elements):
                raise PlyError(f"{path}: element {parts[1]!r} is declared twice (header line {lineno})")
            elements.append(_Element(parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            if not elements:
                raise PlyError(f"{path}: property before any element (header line {lineno})")
            if len(parts) == 5 and parts[1] == "list":
                if parts[2] not in _PLY_TYPES or parts[3] not in _PLY_TYPES:
                    raise PlyError(f"{path}: unknown list property types in {line!r} (header line {lineno})")
                elements[-1].props.append((parts[4], ("list", _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]])))
            elif len(parts) == 3 and parts[1] in _PLY_TYPES:
                elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]]))
            else:
                raise PlyError(f"{path}: unsupported property line {line!r} (header line {lineno})")
        else:
            raise PlyError(f"{path}: unexpected header line {line!r} (header line {lineno})")
    if fmt is None:
        raise PlyError(f"{path}: the header has no 'format' line")
    return fmt, elements, pos


def _check_vertex_props(path: str, vertex: _Element) -> None:
    if vertex.has_lists:
        raise PlyError(f"{path}: list properties in the vertex element are not supported for Gaussians")
    names = [n for n, _ in vertex.props]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise PlyError(f"{path}: duplicate vertex properties {', '.join(dup)}")
    for n, t in vertex.props:
        if (n in _BASE_FIELDS or n.startswith("f_rest_")) and t not in _FLOAT_TYPES:
            kind = next(k for k, v in _PLY_TYPES.items() if v == t)
            raise PlyError(f"{path}: vertex property {n!r} is {kind}; Gaussian attributes must be float or double")


def _read_binary(f, path: str, fmt: str, elements: List[_Element], vi: int, offset: int, size: int):
    endian = "<" if fmt == "binary_little_endian" else ">"
    for e in elements[:vi]:
        if e.has_lists:
            raise PlyError(f"{path}: element {e.name!r} before 'vertex' has list properties; cannot locate the vertices")
        offset += e.count * e.row_bytes()
    vertex = elements[vi]
    dtype = np.dtype([(n, endian + t) for n, t in vertex.props])
    need = vertex.count * dtype.itemsize
    end = offset + need
    after = elements[vi + 1:]
    if size < end:
        raise PlyError(f"{path}: truncated: the header declares {vertex.count} vertices ({need} bytes) "
                       f"but only {max(size - offset, 0)} bytes follow the header")
    if not any(e.has_lists for e in after):
        expected = end + sum(e.count * e.row_bytes() for e in after)
        if size < expected:
            raise PlyError(f"{path}: truncated: {expected - size} bytes of the elements after 'vertex' are missing")
        if size > expected:
            raise PlyError(f"{path}: {size - expected} unexpected bytes after the last element declared in the "
                           "header (a damaged, concatenated or mis-declared file)")
    f.seek(offset)
    data = f.read(need)
    if len(data) != need:  # the file shrank while we read it
        raise PlyError(f"{path}: truncated while reading the vertices")
    table = np.frombuffer(data, dtype=dtype, count=vertex.count)
    return {n: table[n].astype(np.float32) for n, _ in vertex.props}


def _read_ascii(f, path: str, elements: List[_Element], vi: int, offset: int, size: int):
    vertex = elements[vi]
    nprops = len(vertex.props)
    # every value takes at least 2 bytes ("0 " / "0\n"): reject absurd counts before allocating
    min_bytes = vertex.count * max(2 * nprops, 1)
    if size - offset < min_bytes:
        raise PlyError(f"{path}: truncated: the header declares {vertex.count} vertices with {nprops} values each "
                       f"but only {max(size - offset, 0)} bytes follow the header")
    f.seek(offset)
    lines = (ln for ln in f if ln.strip())
    for e in elements[:vi]:
        for i in range(e.count):
            if next(lines, None) is None:
                raise PlyError(f"{path}: truncated inside element {e.name!r} (before the vertices)")
    values = np.empty((vertex.count, nprops), dtype=np.float64)
    for i in range(vertex.count):
        ln = next(lines, None)
        if ln is None:
            raise PlyError(f"{path}: truncated: the header declares {vertex.count} vertices but only {i} vertex "
                           "lines follow")
        tokens = ln.split()
        if len(tokens) != nprops:
            raise PlyError(f"{path}: vertex line {i + 1} has {len(tokens)} values, expected {nprops}")
        try:
            if not all(_ASCII_NUMBER.fullmatch(t.decode("ascii")) for t in tokens):
                raise ValueError
            values[i] = [float(t) for t in tokens]
        except (ValueError, UnicodeDecodeError):
            raise PlyError(f"{path}: vertex line {i + 1} holds a value that is not a plain number") from None
    for e in elements[vi + 1:]:
        for _ in range(e.count):
            if next(lines, None) is None:
                raise PlyError(f"{path}: truncated inside element {e.name!r} (after the vertices)")
    if next(lines, None) is not None:
        raise PlyError(f"{path}: unexpected data after the last element declared in the header")
    return {n: values[:, j].astype(np.float32) for j, (n, _) in enumerate(vertex.props)}


def _read_vertex_table(path: str) -> Tuple[dict, int]:
    """The vertex element's columns (float32 arrays by property name) and its row count.

    The header is parsed and the declared sizes are checked against the file size before
    anything else is read or allocated."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        fmt, elements, offset = _parse_header(f, path)
        names = [e.name for e in elements]
        if "vertex" not in names:
            raise PlyError(f"{path}: no 'vertex' element (found {names or 'none'})")
        vi = names.index("vertex")
        _check_vertex_props(path, elements[vi])
        if fmt == "ascii":
            cols = _read_ascii(f, path, elements, vi, offset, size)
        else:
            cols = _read_binary(f, path, fmt, elements, vi, offset, size)
    return cols, elements[vi].count


def load_ply(path: PathLike, *, normalized_rotations: Optional[bool] = None, on_invalid: str = "raise") -> Gaussians:
    """Read a 3DGS .ply into :class:`Gaussians` (batch 1, float32, CPU).

    Opacity logits -> sigmoid, log-scales -> exp (no 1e-8 correction, as the original),
    ``f_dc_*``/``f_rest_*`` -> ``sh`` [1, N, K, 3]. Quaternions keep their stored values when
    already unit length (so LGM files round-trip exactly); otherwise:

    * ``normalized_rotations=None`` (auto): files whose quaternions are all tiny (norm < 0.1, the
      signature of legacy pre-fix LGM checkpoints, docs/conventions.md#legacy-rotations) are kept raw and flagged
      ``normalized_rotations=False``; any other file gets its quaternions normalised (standard 3DGS
      semantics).
    * ``True``: always normalise. ``False``: keep raw and flag as legacy.

    A file with invalid Gaussians (NaN/Inf values, also after activation: a log-scale >= 88.8
    overflows float32; or, when normalising, a zero quaternion) raises :class:`PlyError` saying how
    many (docs/robustness.md); ``on_invalid="drop"`` drops them with a warning instead.
    """
    if on_invalid not in ("raise", "drop"):
        raise ValueError(f"on_invalid must be 'raise' or 'drop', got {on_invalid!r}")
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
    with np.errstate(over="ignore"):
        opacity = torch.sigmoid(stack(["opacity"]))
        scales = torch.exp(stack(["scale_0", "scale_1", "scale_2"]))
    rots = stack(["rot_0", "rot_1", "rot_2", "rot_3"])
    sh = stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :]
    if degree:
        rest = stack(rest_names).reshape(count, 3, n_rest // 3).transpose(1, 2)
        sh = torch.cat([sh, rest], dim=1)

    norms = rots.norm(dim=-1)
    finite = torch.isfinite(norms)
    if normalized_rotations is None:
        normalized_rotations = not (count > 0 and bool(finite.any()) and bool((norms[finite] < 0.1).all()))
    zero_rot = torch.zeros_like(norms, dtype=torch.bool)
    if normalized_rotations and count:
        zero_rot = finite & (norms < 1e-12)
        if bool(((norms - 1).abs() > 1e-4).any()):
            rots = rots / norms.clamp_min(1e-12)[:, None]
    g = Gaussians(pos[None], scales[None], rots[None], opacity[None], sh[None].contiguous(),
                  normalized_rotations=normalized_rotations)
    if on_invalid == "drop":
        return drop_invalid(g, path, extra=zero_rot[None], extra_label="zero-length rotation")
    return check_finite(g, path, extra=zero_rot[None], extra_label="zero-length rotation",
                        hint="load_ply(..., on_invalid='drop') keeps the valid ones", error=PlyError)
