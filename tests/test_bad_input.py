"""Regressions of issue 14 for bad input files and flags: PLY headers and sizes (items 3, 10),
high-bit-depth and oversized images (item 8), safetensors headers (item 9), one-line CLI errors
for meaningless arguments (items 9, 11)."""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from fuzz_corpus import png_declaring, ply_file, safetensors_file
from lgm_core.image_io import load_image
from lgm_core.ply import PlyError, load_ply


# ------------------------------------------------------------------------------------ PLY (3, 10)
def test_comment_mentioning_end_header_is_not_the_end(tmp_path):
    base = ply_file(n=30)
    (tmp_path / "a.ply").write_bytes(base)
    (tmp_path / "b.ply").write_bytes(base.replace(b"format", b"comment end_header\nformat", 1))
    a, b = load_ply(tmp_path / "a.ply"), load_ply(tmp_path / "b.ply")
    assert torch.equal(a.positions, b.positions) and torch.equal(a.sh, b.sh)


def test_sparse_8gib_tail_is_refused_fast_without_reading_it(tmp_path):
    path = tmp_path / "sparse.ply"
    path.write_bytes(ply_file(n=1))
    with open(path, "r+b") as f:
        f.truncate(8 << 30)  # a sparse 8 GiB file (no disk used)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(PlyError, match="unexpected bytes after the last element"):
        load_ply(path)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 2.0 and peak < 4 << 20, (elapsed, peak)


@pytest.mark.parametrize("edit,match", [
    ((b"element vertex 30", b"element vertex " + b"7" * 5000), "invalid count 777777777777... \\(5000 characters\\)"),
    ((b"property float x", b"property uchar x"), "'x' is uchar; Gaussian attributes must be float or double"),
    ((b"element vertex", b"format ascii 1.0\nelement vertex"), "a second 'format' line"),
    ((b"element vertex 30", b"element vertex -3"), "invalid count -3"),
])
def test_header_lies_are_refused_in_one_line(tmp_path, edit, match):
    path = tmp_path / "x.ply"
    path.write_bytes(ply_file(n=30).replace(*edit, 1))
    with pytest.raises(PlyError, match=match) as info:
        load_ply(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_trailing_bytes_and_strict_ascii(tmp_path):
    path = tmp_path / "x.ply"
    path.write_bytes(ply_file(n=10) + b"\x00\x01")
    with pytest.raises(PlyError, match="2 unexpected bytes"):
        load_ply(path)
    asc = ply_file(n=5, fmt="ascii")
    first = asc[asc.index(b"end_header\n") + 11:].split(b" ")[0]
    path.write_bytes(asc.replace(first, b"1_0", 1))
    with pytest.raises(PlyError, match="not a plain number"):
        load_ply(path)
    path.write_bytes(asc + b"0 0 0\n")
    with pytest.raises(PlyError, match="unexpected data after the last element"):
        load_ply(path)
    path.write_bytes(asc.replace(first, b"1e-3", 1))
    assert load_ply(path).num_gaussians == 5


# ---------------------------------------------------------------------------------- images (8)
def test_high_bit_depth_images_decode_by_their_range(tmp_path):
    ramp = np.linspace(0, 1, 32 * 48).reshape(32, 48)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray((ramp * 65535).round().astype(np.int32), "I").save(tmp_path / "i32.tif")
    Image.fromarray(ramp.astype(np.float32), "F").save(tmp_path / "f.tif")
    for name in ("g16.png", "i32.tif", "f.tif"):
        img = load_image(tmp_path / name)
        assert img.shape == (32, 48, 3)
        assert np.abs(img[..., 0].numpy() - ramp).max() < 1e-4, name  # used to be all white / all black


def test_ambiguous_images_are_refused(tmp_path):
    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    Image.fromarray((ramp * (2 ** 31 - 1)).astype(np.int32), "I").save(tmp_path / "i32.tif")
    Image.fromarray((ramp * 5).astype(np.float32), "F").save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match="32-bit integer image"):
        load_image(tmp_path / "i32.tif")
    with pytest.raises(ValueError, match="float image with values"):
        load_image(tmp_path / "hdr.tif")


def test_oversized_images_are_refused_or_reduced(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(ValueError, match="over the .* MP limit") as info:
        load_image(tmp_path / "bomb.png")
    assert "\n" not in str(info.value)
    Image.new("RGB", (1000, 600), (255, 0, 0)).save(tmp_path / "big.png")
    img = load_image(tmp_path / "big.png", max_side=256)
    assert img.shape == (150, 250, 3) and torch.allclose(img[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    Image.fromarray(np.full((600, 1000), 65535, np.uint16)).save(tmp_path / "big16.png")
    assert load_image(tmp_path / "big16.png", max_side=256).shape == (150, 250, 3)


# ----------------------------------------------------------------------------- safetensors (9)
@pytest.mark.parametrize("header,match", [
    ({"a": {"dtype": "F32", "shape": [10 ** 30], "data_offsets": [0, 24]}}, "needs .* bytes but data_offsets span 24"),
    ({"a": {"dtype": "F32", "shape": [-2, -3], "data_offsets": [0, 24]}}, "non-negative integers"),
    ({"__metadata__": ["a"], "a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}, "__metadata__ must map"),
    ({"__metadata__": "x", "a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}, "__metadata__ must map"),
])
def test_safetensors_header_lies_give_one_line(tmp_path, header, match):
    from lgm_core.weights import CheckpointError, load_lgm, read_safetensors_header

    path = tmp_path / "model_fp16_fixrot.safetensors"
    path.write_bytes(safetensors_file(header, bytes(24)))
    with pytest.raises(CheckpointError, match=match) as info:
        read_safetensors_header(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError, match=match):
        load_lgm(path, device="cpu")


# ----------------------------------------------------------------------------- CLI (9, 11)
@pytest.fixture(scope="module")
def splat_ply(tmp_path_factory):
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    path = tmp_path_factory.mktemp("cli") / "s.ply"
    save_ply(make_scene("sphere", n=1500, seed=0), path)
    return path


def _cli(capsys, *argv):
    from lgm_core.cli import main

    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.mark.parametrize("argv,match", [
    (["mesh", "{ply}", "--texture-size", "-5"], "--texture-size must be an integer in \\[16, 16384\\]"),
    (["mesh", "{ply}", "--texture-size", "0"], "--texture-size must be"),
    (["mesh", "{ply}", "--level", "-1"], "--level must be a positive number"),
    (["mesh", "{ply}", "--resolution", "100000"], "--resolution must be an integer in \\[16, 1024\\]"),
    (["mesh", "{ply}", "--keep-components", "nan"], "--keep-components"),
    (["render", "{ply}", "--radius", "0", "--views", "0", "-o", "{tmp}/v.png"], "--radius must be a positive"),
    (["render", "{ply}", "--elevation", "nan", "--turntable", "2", "-o", "{tmp}/v.mp4"], "--elevation must be"),
    (["render", "{ply}", "--fps", "inf", "--turntable", "2", "-o", "{tmp}/v.mp4"], "--fps must be positive"),
    (["reconstruct", "{ply}", "-o", "{tmp}/x.glb"], "-o must end in .ply \\(or .splat\\), got 'x.glb'"),
])
def test_cli_refuses_meaningless_flags_in_one_line(capsys, tmp_path, splat_ply, argv, match):
    argv = [a.format(ply=splat_ply, tmp=tmp_path) for a in argv]
    rc, line = _cli(capsys, *argv)
    assert rc == 2 and line.startswith("error: ") and __import__("re").search(match, line), line
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".png", ".mp4", ".glb")]


def test_cli_refuses_tiny_views_and_bad_weights(capsys, tmp_path):
    from lgm_core.image_io import write_image

    views = [write_image(torch.rand(1, 1, 3), tmp_path / f"v{i}.png") for i in range(4)]
    rc, line = _cli(capsys, "reconstruct", *views, "-o", tmp_path / "g.ply")
    assert rc == 2 and "too small" in line, line
    big = [write_image(torch.rand(64, 64, 3), tmp_path / f"b{i}.png") for i in range(4)]
    bad = tmp_path / "model_fp16_fixrot.safetensors"
    bad.write_bytes(safetensors_file({"__metadata__": "oops"}, b""))
    rc, line = _cli(capsys, "reconstruct", *big, "-o", tmp_path / "g.ply", "--weights", bad)
    assert rc == 2 and "__metadata__ must map" in line, line
    assert not (tmp_path / "g.ply").exists()


def test_cli_full_disk_message_names_the_target(capsys, tmp_path, splat_ply):
    from test_writers_robust import file_size_limit

    target = tmp_path / "spin.mp4"
    with file_size_limit(8_000):
        rc, line = _cli(capsys, "render", splat_ply, "--turntable", "12", "--size", "128", "-o", target)
    assert rc == 2 and f"cannot write {target}" in line and ".lgm-tmp" not in line, line
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_ply_with_5000_digit_count(capsys, tmp_path):
    path = tmp_path / "huge.ply"
    path.write_bytes(ply_file(n=3).replace(b"element vertex 3", b"element vertex " + b"1" * 5000))
    rc, line = _cli(capsys, "render", path, "--views", "0", "-o", tmp_path / "v.png")
    assert rc == 2 and "invalid count" in line and len(line) < 300, line
    assert os.path.getsize(path) < 10_000
