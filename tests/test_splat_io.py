"""lgm_core.splat_io: every splat format written and read back in one frame (no ComfyUI needed)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lgm_core.gaussians import Gaussians
from lgm_core.mesh.synthetic import make_scene
from lgm_core.ply import save_ply
from lgm_core.splat_io import FORMATS, load_splat_file, ply_frame, save_splat_file, splat_file_bytes
from lgm_core.splat_io.frame import lgm_to_3dgs, threedgs_to_lgm


def _scene():
    g = make_scene("torus", n=600, seed=5)
    g.positions = g.positions + torch.tensor([0.1, 0.4, 0.2])  # off-centre: a flipped file shows
    return g


def _fields(g: Gaussians, like: Gaussians = None):
    """Item 0's fields; with ``like``, reordered to match ``like``'s Gaussians by position (.splat
    files are sorted by importance, the other formats keep the order)."""
    order = slice(None)
    if like is not None:
        order = torch.cdist(like.positions[0].float(), g.positions[0].float()).argmin(1)
    return {k: getattr(g, k)[0][order] for k in ("positions", "scales", "rotations", "opacities", "sh")}


def _same_rotation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    return (a * b).sum(-1).abs()


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips_in_the_lgm_frame(tmp_path, fmt):
    g = _scene()
    back = load_splat_file(save_splat_file(g, tmp_path / f"t.{fmt}", min_opacity=0.0))
    assert back.num_gaussians == g.num_gaussians
    a, b = _fields(g), _fields(back, like=g if fmt == "splat" else None)
    assert torch.allclose(a["positions"], b["positions"], atol=2e-4 if fmt == "spz" else 1e-6)
    assert torch.allclose(a["scales"], b["scales"], rtol=0.04 if fmt == "spz" else 1e-6)
    assert float(_same_rotation(a["rotations"], b["rotations"]).min()) > (0.98 if fmt in ("splat", "spz") else 0.9999)
    assert float((a["opacities"] - b["opacities"]).abs().max()) < 1 / 255 + 1e-6 if fmt != "ply" else True
    rgb = lambda s: (s[:, 0, :] * 0.28209479177387814 + 0.5).clamp(0, 1)  # noqa: E731
    assert float((rgb(a["sh"]) - rgb(b["sh"])).abs().max()) < 1.2 / 255 + 1e-6


@pytest.mark.parametrize("fmt", ["ply", "spz", "ksplat"])
def test_files_hold_the_3dgs_frame(tmp_path, fmt):
    """y-down, z-forward in the file: the object's top (+y in the LGM frame) is stored at -y."""
    g = _scene()
    raw = splat_file_bytes(g, fmt, min_opacity=0.0)
    back_raw = load_splat_file(save_splat_file(g, tmp_path / f"f.{fmt}", min_opacity=0.0), frame="lgm")
    centre = back_raw.positions[0].mean(0)  # as stored, no frame turn
    assert centre[1] < -0.3 and centre[2] < -0.1, centre
    if fmt == "ply":
        assert b"comment frame 3dgs" in raw[:400]
        assert ply_frame(tmp_path / "f.ply") == "3dgs"


def test_original_lgm_ply_is_recognised_as_the_lgm_frame(tmp_path):
    g = _scene()
    save_ply(g, tmp_path / "original.ply")  # the reference layout, y-up
    assert ply_frame(tmp_path / "original.ply") == "lgm"
    back = load_splat_file(tmp_path / "original.ply")
    assert torch.allclose(back.positions, g.positions.float(), atol=1e-6)
    forced = load_splat_file(tmp_path / "original.ply", frame="3dgs")
    assert torch.allclose(forced.positions, lgm_to_3dgs(g).positions, atol=1e-6)


def test_ply_metadata_in_header_comments(tmp_path):
    meta = {"prompt": {"1": {"class_type": "LGMSaveSplat", "inputs": {}}}, "workflow": {"nodes": []}}
    path = save_splat_file(_scene(), tmp_path / "m.ply", metadata=meta, min_opacity=0.0)
    header = path.read_bytes()[:2000].decode("ascii", "replace")
    assert 'comment prompt {"1":{"class_type":"LGMSaveSplat","inputs":{}}}' in header
    assert 'comment workflow {"nodes":[]}' in header
    assert load_splat_file(path).num_gaussians == 600


def test_frame_turn_is_an_involution_and_rotates_sh_exactly():
    g = make_scene("sphere", n=50, seed=1)
    sh = torch.randn(1, 50, 16, 3)
    g = Gaussians(positions=g.positions, scales=g.scales, rotations=g.rotations, opacities=g.opacities, sh=sh)
    twice = threedgs_to_lgm(lgm_to_3dgs(g))
    assert torch.allclose(twice.positions, g.positions) and torch.allclose(twice.sh, g.sh)
    assert float(_same_rotation(twice.rotations[0], g.rotations[0]).min()) > 1 - 1e-6
    # evaluating the turned SH in the turned direction gives the original colour (degree 1: -C1*y, C1*z, -C1*x)
    d = torch.nn.functional.normalize(torch.randn(3), dim=0)
    turned = lgm_to_3dgs(g)
    c1 = 0.4886025119029199

    def band1(s, v):
        return -c1 * v[1] * s[..., 1, :] + c1 * v[2] * s[..., 2, :] - c1 * v[0] * s[..., 3, :]

    dt = d * torch.tensor([1.0, -1.0, -1.0])
    assert torch.allclose(band1(g.sh, d), band1(turned.sh, dt), atol=1e-6)


def test_spz_version_3_rotations_and_bad_files(tmp_path):
    from lgm_core.splat_io.ksplat import KsplatError, read_ksplat
    from lgm_core.splat_io.spz import SpzError, read_spz

    # a hand-made v3 file with one Gaussian: rotation 90 degrees about y (w = y = sqrt(1/2))
    s = 2 ** -0.5
    largest = 3  # components in the format's x, y, z, w order: w is the largest
    comps = {0: 0.0, 1: s, 2: 0.0}
    word, shift = 0, 0
    for c in (2, 1, 0):  # packed from the last non-largest component upwards
        mag = round(abs(comps[c]) / s * 0x1FF)
        word |= ((1 if comps[c] < 0 else 0) << 9 | mag) << shift
        shift += 10
    word |= largest << 30
    body = struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 0, 12, 0, 0) + bytes(9) + bytes([255, 128, 128, 128])
    body += bytes([96, 96, 96]) + struct.pack("<I", word)
    g = read_spz(gzip.compress(body))
    assert torch.allclose(g.rotations[0, 0], torch.tensor([s, 0.0, s, 0.0]), atol=2e-3)
    with pytest.raises(SpzError, match="not a gzip"):
        read_spz(b"nope")
    with pytest.raises(SpzError, match="truncated"):
        read_spz(gzip.compress(body[:-3]))
    with pytest.raises(KsplatError):
        read_ksplat(bytes(100))
    with pytest.raises(ValueError, match="no Gaussian"):
        splat_file_bytes(_scene(), "spz", min_opacity=1.0)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_spz_with_higher_sh_degrees_reads_every_band(tmp_path, degree):
    """An .spz of SH degree 1-3 laid out byte by byte as Niantic's format has it (after the rotations,
    per Gaussian the 3, 8 or 15 higher coefficients, each as r, g, b bytes, ``value * 128 + 128``) is read
    with every band; LGM Load Splat's reader turns it to the LGM frame like the .ply reader does."""
    n, dim = 3, {1: 3, 2: 8, 3: 15}[degree]
    rng = np.random.default_rng(degree)
    rest = rng.integers(0, 256, size=(n, dim, 3), dtype=np.uint8)
    body = struct.pack("<IIIBBBB", 0x5053474E, 2, n, degree, 12, 0, 0)
    body += bytes(9 * n) + bytes([200] * n) + bytes([150, 127, 100] * n) + bytes([96] * 3 * n)
    body += bytes([128, 128, 128] * n)  # identity rotations
    body += bytes(int(rest[i, j, c]) for i in range(n) for j in range(dim) for c in range(3))
    path = tmp_path / "sh.spz"
    path.write_bytes(gzip.compress(body))
    stored = load_splat_file(path, frame="lgm")  # as stored, no frame turn
    assert stored.sh.shape == (1, n, (degree + 1) ** 2, 3) and stored.sh_degree == degree
    assert torch.allclose(stored.sh[0, :, 1:], torch.from_numpy((rest.astype(np.float32) - 128) / 128))
    assert torch.allclose(stored.sh[0, :, 0], torch.tensor([150 - 127.5, -0.5, 100 - 127.5]) / (255 * 0.15))
    turned = load_splat_file(path)  # 3DGS frame file -> LGM frame: the bands re-signed, magnitudes kept
    assert torch.allclose(turned.sh, threedgs_to_lgm(stored).sh)
    assert torch.allclose(turned.sh.abs(), stored.sh.abs())
    with pytest.raises(ValueError, match="truncated"):
        load_splat_file(_write(tmp_path / "cut.spz", gzip.compress(body[:-1])))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_spz_writes_higher_sh_and_round_trips():
    """Save Splat's .spz keeps SH bands up to degree 3 (a splat loaded from a 3DGS .ply keeps its
    view-dependent colour); the frame turn and 8-bit quantisation are the only changes."""
    g = _scene()
    g.sh = torch.cat([g.sh, torch.rand(1, g.num_gaussians, 15, 3, generator=torch.Generator().manual_seed(1))
                      * 1.6 - 0.8], 2)
    raw = splat_file_bytes(g, "spz", min_opacity=0.0)
    assert gzip.decompress(raw)[12] == 3  # SH degree in the header
    from lgm_core.splat_io.spz import read_spz

    back = threedgs_to_lgm(read_spz(raw))
    assert back.sh.shape == g.sh.shape
    assert float((back.sh[0, :, 1:] - g.sh[0, :, 1:]).abs().max()) <= 0.5 / 128 + 1e-6


def test_ksplat_level1_buckets_read(tmp_path):
    """A level-1 file (half floats, bucket-relative u16 centres) decodes to the bucket geometry."""
    from lgm_core.splat_io.ksplat import read_ksplat

    n, rng = 3, 32767
    header = bytearray(4096)
    header[0], header[1] = 0, 1
    struct.pack_into("<IIII", header, 4, 1, 1, n, n)
    struct.pack_into("<H", header, 20, 1)
    section = bytearray(1024)
    struct.pack_into("<IIII", section, 0, n, n, 2, 2)     # 2 splats per bucket, 2 buckets
    struct.pack_into("<f", section, 16, 2.0)              # block size
    struct.pack_into("<H", section, 20, 12)               # bucket centre storage bytes
    struct.pack_into("<I", section, 24, rng)
    struct.pack_into("<II", section, 32, 1, 1)            # one full, one partial bucket
    meta = struct.pack("<I", 1)                           # the partial bucket holds 1 splat
    centres = np.array([[0, 0, 0], [5, 5, 5]], "<f4").tobytes()
    rec = np.zeros(n, dtype=[("c", "<u2", 3), ("s", "<f2", 3), ("r", "<f2", 4), ("col", "u1", 4)])
    rec["c"] = [[rng, rng, rng], [2 * rng, rng, rng], [rng, 0, rng]]
    rec["s"], rec["r"], rec["col"] = 0.01, [1, 0, 0, 0], 200
    g = read_ksplat(bytes(header) + bytes(section) + meta + centres + rec.tobytes())
    expected = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 4.0, 5.0]])
    assert torch.allclose(g.positions[0], expected, atol=1e-3)
