"""Gaussian splat files in every common format, all in one frame.

Formats: ``.ply`` (standard 3DGS, full SH), ``.splat`` (antimatter15, 32 B per Gaussian), ``.spz``
(Niantic, gzip, quantised, SH degree 0-3) and ``.ksplat`` (mkkellogg SplatBuffer). ``.splat`` and
``.ksplat`` keep the DC colour only (``.ksplat`` files with higher SH bands are read, the bands skipped).

**One frame for all formats**: files written here hold the **3DGS frame** (+y down, +z forward), the
frame ComfyUI core's SPLAT, its File3DToSplat/SplatToFile3D and web splat viewers use, so a file looks
upright wherever it is opened. In memory, ``Gaussians`` stay in the LGM frame (+y up, front +z): the
conversion is :mod:`.frame`, applied on every write and read. PLY files written here say so in their
header (``comment frame 3dgs``) and can carry the ComfyUI prompt/workflow as header comments.

The one exception is the original LGM's own ``.ply`` (``lgm_core.ply.save_ply``, byte-identical to the
reference code, used by the library CLI): it is in the LGM frame (y-up). ``load_splat_file(frame="auto")``
recognises it: a PLY with a ``comment frame <lgm|3dgs>`` line is read in that frame; a PLY without one
whose properties are exactly the original LGM layout (``x y z f_dc_* opacity scale_* rot_*`` and
``f_rest_*`` only, no normals) is read as LGM frame; every other file as 3DGS frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from ..fileio import atomic_write_bytes
from ..gaussians import SH_C0, Gaussians, check_finite, drop_invalid
from .frame import lgm_to_3dgs, threedgs_to_lgm

PathLike = Union[str, os.PathLike]

FORMATS = ("ply", "splat", "spz", "ksplat")
FRAMES = ("auto", "3dgs", "lgm")
MIN_OPACITY = 0.005
MAX_METADATA_BYTES = 48 * 1024
"""Metadata larger than this is not put into a PLY header (readers cap headers at 64 KiB)."""


class SplatFileError(ValueError):
    """A file that cannot be read as Gaussian splats (names the file and the reason)."""


def format_of(path: PathLike) -> str:
    """The splat format named by ``path``'s extension; ``ValueError`` for another extension."""
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"{os.fspath(path)}: not a splat file extension (use .{', .'.join(FORMATS)})")
    return ext


def _ply_comments(frame: str, metadata: Optional[Mapping[str, object]]) -> list[str]:
    lines = [f"comment frame {frame} (x right, y {'down, z forward' if frame == '3dgs' else 'up, front +z'})"]
    if metadata:
        extra = [f"comment {key} {json.dumps(value, separators=(',', ':'))}" for key, value in metadata.items()]
        if sum(len(e) + 1 for e in extra) <= MAX_METADATA_BYTES and not any("\n" in e or "\r" in e for e in extra):
            lines += extra
    return lines


def splat_file_bytes(gaussians: Gaussians, fmt: str, *, index: int = 0, min_opacity: float = MIN_OPACITY,
                     metadata: Optional[Mapping[str, object]] = None, source: str = "Gaussians") -> bytes:
    """File content of batch item ``index`` (LGM frame in memory) as ``fmt``, in the 3DGS frame.
    ``metadata`` (JSON-serialisable values, e.g. ComfyUI's ``prompt``/``workflow``) goes into PLY headers;
    the other formats have no place for it. Gaussians with opacity < ``min_opacity`` are left out."""
    from ..ply import ply_bytes
    from ..splat_formats import splat_bytes

    if fmt not in FORMATS:
        raise ValueError(f"unknown splat format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not 0.0 <= float(min_opacity) <= 1.0:
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity}")
    if fmt == "splat":  # its writer turns to the 3DGS frame itself
        return splat_bytes(gaussians, index=index, min_opacity=min_opacity, source=source)
    g = lgm_to_3dgs(gaussians[index].detach().float().cpu())
    if fmt == "ply":
        raw = ply_bytes(g, min_opacity=min_opacity, source=source)
        head, sep, body = raw.partition(b"\nend_header\n")
        first, _, rest = head.partition(b"\n")  # "ply"
        fmt_line, _, rest = rest.partition(b"\n")
        comments = "\n".join(_ply_comments("3dgs", metadata)).encode("ascii", "backslashreplace")
        return b"\n".join([first, fmt_line, comments, rest]) + sep + body
    g = check_finite(g, source, extra=(g.scales < 0).any(-1) | (g.rotations.norm(dim=-1) < 1e-12),
                     extra_label="negative scale or zero-length rotation")
    keep = g.opacities[0, :, 0] >= float(min_opacity)
    if not bool(keep.any()):
        raise ValueError(f"{source}: no Gaussian to write (none has opacity >= {float(min_opacity)})")
    pos, scales, rots, alpha, sh = (t[0][keep] for t in (g.positions, g.scales, g.rotations, g.opacities, g.sh))
    if fmt == "spz":
        from .spz import spz_bytes

        return spz_bytes(pos, scales, rots, alpha, sh[:, :16, :])  # SH degree <= 3 (all the format holds)
    from .ksplat import ksplat_bytes

    return ksplat_bytes(pos, scales, rots, alpha, (sh[:, 0, :] * SH_C0 + 0.5).clamp(0, 1))


def save_splat_file(gaussians: Gaussians, path: PathLike, *, index: int = 0, min_opacity: float = MIN_OPACITY,
                    metadata: Optional[Mapping[str, object]] = None) -> Path:
    """Write batch item ``index`` to ``path`` (format from the extension, 3DGS frame), atomically."""
    fmt = format_of(path)
    data = splat_file_bytes(gaussians, fmt, index=index, min_opacity=min_opacity, metadata=metadata,
                            source=f"cannot write {os.fspath(path)}")
    atomic_write_bytes(path, data)
    return Path(path)


def _ply_header(path: str) -> list[str]:
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    return head[:end if end >= 0 else len(head)].decode("ascii", "replace").splitlines()


def ply_frame(path: PathLike) -> str:
    """The frame of a .ply file: ``"3dgs"`` or ``"lgm"`` (rules in the module docstring)."""
    lines = _ply_header(os.fspath(path))
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "comment" and parts[1] == "frame" and parts[2] in ("3dgs", "lgm"):
            return parts[2]
    names, in_vertex = [], False
    for line in lines:
        parts = line.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1:2] == ["vertex"]
        elif parts[:1] == ["property"] and in_vertex:
            names.append(parts[-1])
    base = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"}
    original = set(names) - {n for n in names if n.startswith("f_rest_")} == base
    return "lgm" if original else "3dgs"


def detect_format(data: bytes) -> Optional[str]:
    """The format the bytes look like (``None`` when they match none): ply header, gzip (.spz),
    .ksplat version header; .splat has no signature (the caller goes by the extension)."""
    if data[:4] in (b"ply\n", b"ply\r"):
        return "ply"
    if data[:2] == b"\x1f\x8b":
        return "spz"
    if len(data) >= 4096 and data[0] == 0 and data[1] >= 1:
        return "ksplat"
    return None


def load_splat_file(path: PathLike, *, frame: str = "auto", on_invalid: str = "raise") -> Gaussians:
    """Read a splat file (format from its content, else its extension) into Gaussians in the LGM frame.

    ``frame``: the file's frame, ``"auto"`` (see the module docstring), ``"3dgs"`` or ``"lgm"``.
    Raises ``FileNotFoundError``, or a ``ValueError`` naming the file for anything unreadable.
    """
    from ..ply import load_ply
    from ..splat_formats import load_splat

    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such splat file: {path}")
    with open(path, "rb") as f:
        head = f.read(4096)
    fmt = detect_format(head) or format_of(path)
    if fmt == "splat":
        g = load_splat(path, on_invalid=on_invalid)  # read in the 3DGS frame, returned in the LGM frame
        return g if frame in ("auto", "3dgs") else lgm_to_3dgs(g)
    if fmt == "ply":
        g = load_ply(path, on_invalid=on_invalid)
        file_frame = ply_frame(path) if frame == "auto" else frame
        return threedgs_to_lgm(g) if file_frame == "3dgs" else g
    data = Path(path).read_bytes()
    if fmt == "spz":
        from .spz import read_spz

        g = read_spz(data, path)
    else:
        from .ksplat import read_ksplat

        g = read_ksplat(data, path)
    g = check_finite(g, path, error=SplatFileError) if on_invalid == "raise" else drop_invalid(g, path)
    return g if frame == "lgm" else threedgs_to_lgm(g)


__all__ = ["FORMATS", "FRAMES", "SplatFileError", "format_of", "splat_file_bytes", "save_splat_file",
           "load_splat_file", "ply_frame", "detect_format"]
