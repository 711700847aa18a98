"""Seeded corpus of damaged and hostile input files for the readers (PLY, .splat, safetensors,
images), and a runner that checks each reader's behaviour on them.

Every :class:`Case` carries the bytes of one file and what a correct reader must do with it:

* ``"error"``: raise the reader's own error (a ``ValueError`` subclass) naming the file;
* ``"same"``: load, and give exactly what the undamaged base file gives (e.g. a header comment
  that mentions ``end_header``, CRLF line ends);
* ``"load"``: load (a valid file);
* ``"any"``: either raise the reader's error or load something sane (finite values, counts that
  match the file) -- for random byte flips inside data, which no format can detect.

:func:`run_case` also fails a case that raises any other exception type, runs longer than a
time limit (a hang) or allocates (``tracemalloc``: Python and NumPy memory) more than a small
multiple of the file's size. The corpus is deterministic for a seed; ``make_corpus(seed)`` gives
a few hundred cases that run in a few seconds (tests/test_fuzz.py).
"""

from __future__ import annotations

import io
import json
import signal
import struct
import time
import tracemalloc
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

FIELDS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
          "rot_0", "rot_1", "rot_2", "rot_3"]


@dataclass
class Case:
    kind: str            # "ply" | "splat" | "safetensors" | "image"
    name: str            # what was done to the base file
    data: bytes
    expect: str          # "error" | "same" | "load" | "any"
    suffix: str = ""
    base: Optional[bytes] = None  # the undamaged file, for "same"
    check: Optional[Callable] = None  # extra check on a loaded result (returns an error string or None)
    meta: Dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- PLY
def ply_file(n: int = 48, fmt: str = "binary_little_endian", rest: int = 0, seed: int = 0, extra_header: str = "",
             before: Optional[tuple] = None, after: Optional[tuple] = None, eol: str = "\n") -> bytes:
    """A valid 3DGS .ply with ``n`` Gaussians (plus ``nx ny nz`` and ``f_rest_*`` columns)."""
    rng = np.random.default_rng(seed)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(rest)] + \
        ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols = {k: rng.normal(size=n) for k in names}
    for k in ("scale_0", "scale_1", "scale_2"):
        cols[k] = rng.uniform(-6, -2, size=n)
    head = ["ply", f"format {fmt} 1.0"] + ([extra_header] if extra_header else [])
    body = b""
    endian = "<" if fmt != "binary_big_endian" else ">"
    if before:
        head += [f"element {before[0]} {before[1]}", "property float a", "property uchar b"]
        rows = np.zeros(before[1], dtype=[("a", endian + "f4"), ("b", "u1")])
        body += rows.tobytes() if fmt != "ascii" else "".join("0 0\n" for _ in range(before[1])).encode()
    head.append(f"element vertex {n}")
    head += [f"property float {k}" for k in names]
    table = np.stack([cols[k] for k in names], axis=1).astype(np.float32)
    if fmt == "ascii":
        body += "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in table).encode()
    else:
        body += table.astype(endian + "f4").tobytes()
    if after:
        head += [f"element {after[0]} {after[1]}", "property int c"]
        body += np.zeros(after[1], dtype=endian + "i4").tobytes() if fmt != "ascii" else \
            "".join("0\n" for _ in range(after[1])).encode()
    head.append("end_header")
    return (eol.join(head) + eol).encode() + body


def _header_end(data: bytes) -> int:
    return data.index(b"end_header") + len(b"end_header\n")


def _replace_first(data: bytes, old: bytes, new: bytes) -> bytes:
    i = data.index(old)
    return data[:i] + new + data[i + len(old):]


def _set_value(data: bytes, row: int, col_name: bytes, value: float) -> bytes:
    """Overwrite one float of a binary little-endian file made by :func:`ply_file`."""
    head = data[:_header_end(data)].split(b"\n")
    props = [ln.split()[-1] for ln in head if ln.startswith(b"property")]
    ncol = len(props)
    j = props.index(col_name)
    off = _header_end(data) + 4 * (row * ncol + j)
    return data[:off] + struct.pack("<f", value) + data[off + 4:]


def ply_cases(rng: np.random.Generator, n_random: int = 150) -> List[Case]:
    cases: List[Case] = []
    le = ply_file()
    be = ply_file(fmt="binary_big_endian", seed=1)
    asc = ply_file(fmt="ascii", seed=2, n=24)
    sh1 = ply_file(rest=9, seed=3)
    bases = {"le": le, "be": be, "ascii": asc, "sh1": sh1,
             "elements": ply_file(seed=4, before=("camera", 3), after=("edge", 5)),
             "ascii_elements": ply_file(fmt="ascii", seed=5, n=12, before=("camera", 2), after=("edge", 3))}
    for name, data in bases.items():
        cases.append(Case("ply", f"valid {name}", data, "load"))
    # -- header edge cases that must load exactly like the base file
    cases.append(Case("ply", "comment mentioning end_header", _replace_first(le, b"format", b"comment end_header\nformat"),
                      "same", base=le))
    cases.append(Case("ply", "comment end_header after the elements",
                      _replace_first(le, b"end_header\n", b"comment see end_header below\nend_header\n"), "same", base=le))
    cases.append(Case("ply", "CRLF header", ply_file(eol="\r\n"), "same", base=le))
    cases.append(Case("ply", "obj_info line", _replace_first(le, b"element", b"obj_info made by a tool\nelement"),
                      "same", base=le))
    cases.append(Case("ply", "zero vertices", ply_file(n=0), "load"))
    # -- damage every reader must report
    hl = _header_end(le)
    fixed = [
        ("empty file", b""),
        ("not a PLY", b"hello world\n" * 10),
        ("ply prefix only", b"plyx\nformat binary_little_endian 1.0\n"),
        ("no end_header", le[:hl - len(b"end_header\n")]),
        ("cut right after end_header", le[:hl - 1]),
        ("no format line", _replace_first(le, b"format binary_little_endian 1.0\n", b"")),
        ("second format line", _replace_first(le, b"element", b"format ascii 1.0\nelement")),
        ("format version 2.0", _replace_first(le, b" 1.0", b" 2.0")),
        ("unknown format", _replace_first(le, b"binary_little_endian", b"binary_middle_endian")),
        ("trailing bytes", le + b"\x00" * 7),
        ("trailing garbage text", le + b"this is not vertex data\n"),
        ("vertex count +1", _replace_first(le, b"element vertex 48", b"element vertex 49")),
        ("vertex count -1", _replace_first(le, b"element vertex 48", b"element vertex 47")),
        ("vertex count 5000 digits", _replace_first(le, b"element vertex 48", b"element vertex " + b"9" * 5000)),
        ("vertex count 10^15", _replace_first(le, b"element vertex 48", b"element vertex 1000000000000000")),
        ("negative vertex count", _replace_first(le, b"element vertex 48", b"element vertex -48")),
        ("unicode digit count", _replace_first(le, b"element vertex 48", "element vertex 4\u00b2".encode())),
        ("uchar x over a float column", _replace_first(le, b"property float x", b"property uchar x")),
        ("int opacity", _replace_first(le, b"property float opacity", b"property int opacity")),
        ("double x over a float column", _replace_first(le, b"property float x", b"property double x")),
        ("duplicate property", _replace_first(le, b"property float nx", b"property float x")),
        ("duplicate element", _replace_first(le, b"end_header", b"element vertex 2\nproperty float q\nend_header")),
        ("list property in vertex", _replace_first(le, b"property float nx", b"property list uchar int nx")),
        ("unknown property type", _replace_first(le, b"property float y", b"property quaternion y")),
        ("property before element", _replace_first(le, b"element vertex", b"property float q\nelement vertex")),
        ("missing opacity", _replace_first(le, b"property float opacity", b"property float opacityy")),
        ("5 f_rest", ply_file(rest=5)),
        ("non-ASCII header line", _replace_first(le, b"property float nx", "property float n\u00e9".encode())),
        ("header of 70 KB comments", b"ply\n" + b"comment " + b"x" * 70000 + b"\n" + le[4:]),
        ("NaN position", _set_value(le, 3, b"x", float("nan"))),
        ("Inf position", _set_value(le, 0, b"z", float("inf"))),
        ("NaN colour", _set_value(le, 5, b"f_dc_1", float("nan"))),
        ("NaN opacity", _set_value(le, 7, b"opacity", float("nan"))),
        ("NaN scale", _set_value(le, 9, b"scale_2", float("nan"))),
        ("NaN rotation", _set_value(le, 11, b"rot_0", float("nan"))),
        ("log-scale 88.8 overflows", _set_value(le, 2, b"scale_0", 88.8)),
        ("zero quaternion", _set_value(_set_value(_set_value(_set_value(le, 4, b"rot_0", 0.0), 4, b"rot_1", 0.0),
                                                   4, b"rot_2", 0.0), 4, b"rot_3", 0.0)),
        ("ascii 1_0", asc.replace(asc[_header_end(asc):].split(b" ")[0], b"1_0", 1)),
        ("ascii hex float", asc.replace(asc[_header_end(asc):].split(b" ")[0], b"0x1p3", 1)),
        ("ascii word", asc.replace(asc[_header_end(asc):].split(b" ")[0], b"abc", 1)),
        ("ascii nan", asc.replace(asc[_header_end(asc):].split(b" ")[0], b"nan", 1)),
        ("ascii trailing line", asc + b"1 2 3\n"),
        ("ascii missing line", asc[:asc.rindex(b"\n", 0, len(asc) - 1) + 1]),
        ("ascii extra value", asc.replace(b"\n", b" 0\n", asc.count(b"\n") - 2)[:0] + asc.rstrip(b"\n") + b" 1.0\n"),
        ("ascii count 10^14", _replace_first(asc, b"element vertex 24", b"element vertex 100000000000000")),
        ("element after vertex cut", bases["elements"][:-6]),
        ("element after vertex + trailing", bases["elements"] + b"\x01\x02\x03\x04"),
        ("ascii element after vertex missing", bases["ascii_elements"].rsplit(b"0\n", 1)[0]),
        ("sparse 1 MB tail", ply_file(n=1) + b"\x00" * (1 << 20)),
    ]
    for name, data in fixed:
        cases.append(Case("ply", name, data, "error"))
    for cut in sorted(set(int(c) for c in rng.integers(1, len(le), size=20))):
        cases.append(Case("ply", f"truncated at {cut}", le[:cut], "error"))
    last_line = asc.rstrip(b"\n").rindex(b"\n") + 1
    for cut in sorted(set(int(c) for c in rng.integers(_header_end(asc) + 5, len(asc) - 2, size=6))):
        # a cut inside the last line may only shorten its last number: undetectable in ASCII
        cases.append(Case("ply", f"ascii truncated at {cut}", asc[:cut], "error" if cut < last_line else "any"))
    for k in range(n_random):  # random damage: flips in the header or data, random length changes
        base_name = list(bases)[k % len(bases)]
        data = bytearray(bases[base_name])
        op = k % 5
        if op == 0:  # flip a data byte
            i = int(rng.integers(_header_end(bytes(data)), len(data))) if len(data) > _header_end(bytes(data)) else 0
            data[i] ^= 1 << int(rng.integers(0, 8))
            name = f"{base_name}: data bit flip at {i}"
        elif op == 1:  # flip a header byte
            i = int(rng.integers(0, _header_end(bytes(data))))
            data[i] = int(rng.integers(0, 256))
            name = f"{base_name}: header byte {i} set"
        elif op == 2:  # overwrite a run with random bytes
            i = int(rng.integers(0, len(data)))
            run = rng.bytes(int(rng.integers(1, 64)))
            data[i:i + len(run)] = run
            name = f"{base_name}: random run at {i}"
        elif op == 3:  # insert bytes
            i = int(rng.integers(0, len(data)))
            data[i:i] = rng.bytes(int(rng.integers(1, 16)))
            name = f"{base_name}: insertion at {i}"
        else:  # delete bytes
            i = int(rng.integers(0, len(data)))
            del data[i:i + int(rng.integers(1, 16))]
            name = f"{base_name}: deletion at {i}"
        cases.append(Case("ply", name, bytes(data), "any"))
    return cases


# ---------------------------------------------------------------------------------------- .splat
def splat_file(n: int = 40, seed: int = 0) -> bytes:
    import torch

    from lgm_core.gaussians import Gaussians
    from lgm_core.splat_formats import splat_bytes

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n, 14, generator=gen)
    x[..., 3] = 0.5 + 0.5 * x[..., 3]
    x[..., 4:7] = 0.01 + 0.05 * x[..., 4:7]
    x[..., 7:11] = torch.nn.functional.normalize(x[..., 7:11] - 0.5, dim=-1)
    return splat_bytes(Gaussians.from_lgm_tensor(x))


def splat_cases(rng: np.random.Generator, n_random: int = 40) -> List[Case]:
    base = splat_file()
    rec = 32
    cases = [Case("splat", "valid", base, "load")]

    def put(data: bytes, record: int, offset: int, fmt: str, *values) -> bytes:
        i = record * rec + offset
        packed = struct.pack(fmt, *values)
        return data[:i] + packed + data[i + len(packed):]

    ply = ply_file(n=200)
    fixed = [
        ("empty", b""),
        ("not a multiple of 32", base[:-5]),
        ("one byte", base[:1]),
        ("NaN position", put(base, 3, 0, "<f", float("nan"))),
        ("Inf scale", put(base, 5, 12, "<f", float("inf"))),
        ("negative scale", put(base, 7, 16, "<f", -0.1)),
        ("zero quaternion", put(base, 9, 28, "4B", 128, 128, 128, 128)),
        ("tiny quaternion", put(base, 9, 28, "4B", 130, 127, 128, 129)),
        ("first 32,000 bytes of a PLY", (ply * 200)[:32000]),
        ("a PLY body at an offset", ply[300:300 + 32 * 100]),
        ("a PNG signature", b"\x89PNG\r\n\x1a\n" + bytes(24) * 4 + bytes(8)),
        ("a glb", b"glTF" + bytes(60)),
        ("random bytes", rng.bytes(32 * 50)),
        ("zeros", bytes(32 * 20)),
        ("ascii text", (b"x y z 1 2 3 hello world! " * 100)[:32 * 60]),
    ]
    for name, data in fixed:
        cases.append(Case("splat", name, data, "error"))
    for k in range(n_random):
        data = bytearray(base)
        i = int(rng.integers(0, len(data)))
        if k % 2:
            data[i] ^= 1 << int(rng.integers(0, 8))
            name = f"bit flip at {i}"
        else:
            data = data[:i] + rng.bytes(int(rng.integers(1, 40))) + data[i:]
            name = f"insertion at {i}"
        cases.append(Case("splat", name, bytes(data), "any"))
    return cases


# ----------------------------------------------------------------------------------- safetensors
def safetensors_file(header: Optional[dict] = None, body: Optional[bytes] = None, raw_header: Optional[bytes] = None,
                     length: Optional[int] = None) -> bytes:
    """A safetensors file; by default two float32 tensors and string metadata."""
    if header is None:
        header = {"__metadata__": {"lgm_rotation_mode": "per_gaussian"},
                  "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                  "b.bias": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}}
        body = np.arange(6, dtype="<f4").tobytes() + np.ones(4, dtype="<f2").tobytes()
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + (body or b"")


def safetensors_cases(rng: np.random.Generator, n_random: int = 30) -> List[Case]:
    base = safetensors_file()
    body = base[8 + struct.unpack("<Q", base[:8])[0]:]
    good = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "b.bias": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}}

    def edit(fn) -> bytes:
        h = json.loads(json.dumps(good))
        fn(h)
        return safetensors_file(h, body)

    cases = [Case("safetensors", "valid", base, "load"),
             Case("safetensors", "valid, no metadata", safetensors_file(good, body), "load"),
             Case("safetensors", "valid, no tensors", safetensors_file({}, b""), "load")]
    fixed = [
        ("empty", b""),
        ("7 bytes", base[:7]),
        ("length 0", safetensors_file(length=0)),
        ("length 1", safetensors_file(length=1)),
        ("length past the end", safetensors_file(length=10_000)),
        ("length 2^63", safetensors_file(length=2 ** 63)),
        ("a pickle", b"\x80\x04\x95" + bytes(40)),
        ("not JSON", safetensors_file(raw_header=b"{not json at all}")),
        ("invalid UTF-8", safetensors_file(raw_header=b'{"\xff\xfe": 1}')),
        ("JSON list", safetensors_file(raw_header=b"[1, 2, 3]")),
        ("JSON string", safetensors_file(raw_header=b'"hello"')),
        ("deep nesting", safetensors_file(raw_header=b"[" * 100000 + b"]" * 100000)),
        ("__metadata__ list", edit(lambda h: h.update(__metadata__=["a", "b"]))),
        ("__metadata__ string", edit(lambda h: h.update(__metadata__="per_gaussian"))),
        ("__metadata__ number values", edit(lambda h: h.update(__metadata__={"lgm_rotation_mode": 3}))),
        ("shape [10**30]", edit(lambda h: h["a.weight"].update(shape=[10 ** 30]))),
        ("negative shape", edit(lambda h: h["a.weight"].update(shape=[-2, -3]))),
        ("float shape", edit(lambda h: h["a.weight"].update(shape=[2.0, 3.0]))),
        ("string shape", edit(lambda h: h["a.weight"].update(shape="2x3"))),
        ("shape of wrong size", edit(lambda h: h["a.weight"].update(shape=[3, 3]))),
        ("unknown dtype", edit(lambda h: h["a.weight"].update(dtype="F128"))),
        ("missing dtype", edit(lambda h: h["a.weight"].pop("dtype"))),
        ("offsets reversed", edit(lambda h: h["a.weight"].update(data_offsets=[24, 0]))),
        ("offsets past the end", edit(lambda h: h["b.bias"].update(data_offsets=[24, 10 ** 12]))),
        ("offsets overlap", edit(lambda h: h["b.bias"].update(data_offsets=[20, 28]))),
        ("offsets of 3", edit(lambda h: h["a.weight"].update(data_offsets=[0, 24, 30]))),
        ("negative offsets", edit(lambda h: h["a.weight"].update(data_offsets=[-24, 0]))),
        ("entry not an object", edit(lambda h: h.update({"a.weight": [1, 2]}))),
        ("truncated body", base[:-3]),
        ("trailing bytes", base + b"\x00" * 8),
        ("NaN weights", safetensors_file(good, np.full(6, np.nan, dtype="<f4").tobytes() + body[24:])),
        ("Inf weights", safetensors_file(good, body[:24] + np.full(4, np.inf, dtype="<f2").tobytes())),
    ]
    for name, data in fixed:
        cases.append(Case("safetensors", name, data, "error"))
    for k in range(n_random):
        data = bytearray(base)
        i = int(rng.integers(0, len(data)))
        data[i] = int(rng.integers(0, 256))
        cases.append(Case("safetensors", f"byte {i} set", bytes(data), "any"))
    return cases


# ---------------------------------------------------------------------------------------- images
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` 8-bit RGB pixels (data for 1 row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 4))
            + _png_chunk(b"IEND", b""))


def image_bytes(array: np.ndarray, fmt: str, mode: Optional[str] = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def image_cases(rng: np.random.Generator, n_random: int = 30) -> List[Case]:
    h, w = 24, 32
    ramp = np.linspace(0.0, 1.0, h * w, dtype=np.float64).reshape(h, w)
    rgb = (np.stack([ramp, ramp[::-1], 1 - ramp], -1) * 255).round().astype(np.uint8)
    rgba = np.concatenate([rgb, (ramp[..., None] * 255).astype(np.uint8)], -1)
    cases: List[Case] = []

    def expect_grey(values: np.ndarray, tol: float):
        def check(t):
            got = t.numpy()
            if got.shape != (h, w, 3):
                return f"shape {got.shape}"
            err = float(np.abs(got[..., 0] - values).max())
            return None if err <= tol else f"values off by {err:.3g} (decoded wrong)"
        return check

    def expect_rgb(ref: np.ndarray, tol: float):
        def check(t):
            got = t.numpy()
            if got.shape != ref.shape:
                return f"shape {got.shape} != {ref.shape}"
            err = float(np.abs(got - ref / 255.0).max())
            return None if err <= tol else f"values off by {err:.3g}"
        return check

    valid = [
        ("png RGB", image_bytes(rgb, "PNG"), ".png", expect_rgb(rgb, 1e-6)),
        ("png RGBA", image_bytes(rgba, "PNG"), ".png", expect_rgb(rgba, 1e-6)),
        ("png grey 8-bit", image_bytes(rgb[..., 0], "PNG"), ".png", expect_grey(rgb[..., 0] / 255.0, 1e-6)),
        ("png grey 16-bit", image_bytes((ramp * 65535).round().astype(np.uint16), "PNG"), ".png",
         expect_grey(ramp, 1e-4)),
        ("tiff 32-bit int within 16 bits", image_bytes((ramp * 65535).round().astype(np.int32), "TIFF", "I"), ".tif",
         expect_grey(ramp, 1e-4)),
        ("tiff float in [0, 1]", image_bytes(ramp.astype(np.float32), "TIFF", "F"), ".tif", expect_grey(ramp, 1e-6)),
        ("jpeg", image_bytes(rgb, "JPEG"), ".jpg", expect_rgb(rgb, 0.2)),
        ("webp lossless", None, ".webp", expect_rgb(rgb, 1e-6)),
        ("bmp", image_bytes(rgb, "BMP"), ".bmp", expect_rgb(rgb, 1e-6)),
        ("gif", image_bytes(rgb, "GIF"), ".gif", None),
        ("1x1 png", image_bytes(rgb[:1, :1], "PNG"), ".png", None),
    ]
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="WEBP", lossless=True)
    valid[7] = ("webp lossless", buf.getvalue(), ".webp", expect_rgb(rgb, 1e-6))
    for name, data, suffix, check in valid:
        cases.append(Case("image", name, data, "load", suffix, check=check))
    base_png = valid[0][1]
    fixed = [
        ("empty", b"", ".png"),
        ("not an image", b"hello" * 100, ".png"),
        ("truncated png", base_png[:len(base_png) // 2], ".png"),
        ("png header only", base_png[:33], ".png"),
        ("truncated jpeg", valid[6][1][: len(valid[6][1]) // 3], ".jpg"),
        ("tiff 32-bit int full range", image_bytes((ramp * (2 ** 31 - 1)).astype(np.int32), "TIFF", "I"), ".tif"),
        ("tiff float above 1", image_bytes((ramp * 4).astype(np.float32), "TIFF", "F"), ".tif"),
        ("tiff float NaN", image_bytes(np.full((h, w), np.nan, np.float32), "TIFF", "F"), ".tif"),
        ("png declaring 100000 x 100000", png_declaring(100_000, 100_000), ".png"),
        ("png declaring 20000 x 20000", png_declaring(20_000, 20_000), ".png"),
        ("png declaring 0 x 10", png_declaring(0, 10), ".png"),
    ]
    for name, data, suffix in fixed:
        cases.append(Case("image", name, data, "error", suffix))
    for k in range(n_random):
        name0, data0, suffix, _ = valid[k % 7]
        data = bytearray(data0)
        i = int(rng.integers(0, len(data)))
        data[i] = int(rng.integers(0, 256))
        cases.append(Case("image", f"{name0}: byte {i} set", bytes(data), "any", suffix))
    return cases


def make_corpus(seed: int = 0, scale: float = 1.0) -> List[Case]:
    """The whole corpus (a few hundred cases at ``scale`` 1)."""
    rng = np.random.default_rng(seed)
    return (ply_cases(rng, int(150 * scale)) + splat_cases(rng, int(40 * scale)) +
            safetensors_cases(rng, int(30 * scale)) + image_cases(rng, int(30 * scale)))


# ---------------------------------------------------------------------------------------- runner
class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


def sane_gaussians(g) -> Optional[str]:
    """Why loaded Gaussians are garbage (non-finite fields, opacity outside [0, 1], negative scales), or None."""
    import torch

    for name in ("positions", "scales", "rotations", "opacities", "sh"):
        if not bool(torch.isfinite(getattr(g, name)).all()):
            return f"{name} hold NaN/Inf"
    if not bool(((g.opacities >= 0) & (g.opacities <= 1)).all()):
        return "opacity outside [0, 1]"
    if not bool((g.scales >= 0).all()):
        return "negative scales"
    return None


def sane_state(state) -> Optional[str]:
    """Why a loaded state dict is garbage (non-finite floating tensors), or None."""
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return f"NaN tensors {bad}" if bad else None


def sane_image(t) -> Optional[str]:
    """Why a decoded image is garbage (pixels non-finite or outside [0, 1]), or None."""
    import torch

    if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
        return "pixels outside [0, 1]"
    return None


SANITY_CHECKS = {"ply": sane_gaussians, "splat": sane_gaussians, "safetensors": sane_state, "image": sane_image}
"""kind -> sanity check of a loaded result (None = plausible); uses torch only, so any checkout can run it."""


def readers():
    """kind -> (read function, the reader's error class, sanity check of a loaded result)."""
    from lgm_core.image_io import load_image
    from lgm_core.ply import PlyError, load_ply
    from lgm_core.splat_formats import SplatError, load_splat
    from lgm_core.weights import CheckpointError, load_safetensors, read_safetensors_header

    def read_weights(path):
        header = read_safetensors_header(path)
        return load_safetensors(path, header=header)

    return {
        "ply": (load_ply, PlyError, sane_gaussians),
        "splat": (load_splat, SplatError, sane_gaussians),
        "safetensors": (read_weights, CheckpointError, sane_state),
        "image": (load_image, ValueError, sane_image),
    }


def _same(a, b) -> bool:
    import torch

    if hasattr(a, "positions"):
        return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("positions", "scales", "rotations",
                                                                         "opacities", "sh"))
    return bool(torch.equal(a, b))


def run_case(case: Case, folder: Path, *, time_limit_s: float = 5.0, memory_factor: float = 16.0,
             memory_floor: int = 4 << 20, table: Optional[dict] = None) -> Optional[str]:
    """Write ``case`` to ``folder`` and read it; None when the reader behaved, else what went wrong.
    ``table``: kind -> (read, error class, sanity check), default :func:`readers`."""
    read, error_class, sane = (table or readers())[case.kind]
    suffix = case.suffix or {"ply": ".ply", "splat": ".splat", "safetensors": ".safetensors"}.get(case.kind, "")
    path = folder / f"case{suffix}"
    path.write_bytes(case.data)
    limit = memory_floor + memory_factor * len(case.data)
    old = signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start()
    t0 = time.perf_counter()
    outcome, result = None, None
    try:
        signal.setitimer(signal.ITIMER_REAL, time_limit_s)
        try:
            result = read(path)
            outcome = "load"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        return f"hang: still running after {time_limit_s} s"
    except error_class as exc:
        outcome = "error"
        if str(path) not in str(exc) and path.name not in str(exc):
            return f"the error does not name the file: {exc}"
        if "\n" in str(exc).strip():
            return f"the error is not one line: {exc!r}"
    except Exception as exc:  # the wrong type: an unexpected crash
        return f"unexpected {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - t0
    if peak > limit:
        return f"allocated {peak / 1e6:.1f} MB for a {len(case.data)}-byte file"
    if case.expect == "error" and outcome != "error":
        return "loaded a file that must be refused (silently as garbage)"
    if case.expect in ("load", "same") and outcome != "load":
        return "refused a valid file"
    if outcome == "load":
        problem = sane(result)
        if problem:
            return f"loaded garbage: {problem}"
        if case.check is not None:
            problem = case.check(result)
            if problem:
                return f"loaded wrongly: {problem}"
        if case.expect == "same":
            base_path = folder / f"base{suffix}"
            base_path.write_bytes(case.base)
            if not _same(result, read(base_path)):
                return "loaded differently from the undamaged file"
    case.meta["elapsed_s"] = elapsed
    return None
