"""Turntable export: .mp4 through the imageio-ffmpeg binary, animated .webp/.gif through Pillow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lgm_core.image_io import to_uint8, write_image
from lgm_core.video import read_video, write_video


def _frames(t=6, h=32, w=48):
    """A moving bright square on a gradient, float in [0, 1], [T, H, W, 3]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = torch.zeros(t, h, w, 3)
    for i in range(t):
        out[i, ..., 0] = x
        out[i, ..., 1] = y
        out[i, 8:20, 4 + 6 * i:16 + 6 * i, :] = 1.0
    return out


@pytest.mark.parametrize("ext", [".mp4", ".webp", ".gif"])
def test_write_and_read_back(tmp_path, ext):
    frames = _frames()
    path = write_video(frames, tmp_path / f"spin{ext}", fps=12)
    assert path.exists() and path.stat().st_size > 0
    back = read_video(path)
    assert back.shape == (6, 32, 48, 3)
    ref = to_uint8(frames).astype(np.float32)
    err = np.abs(back.astype(np.float32) - ref).mean()
    assert err < (12 if ext == ".gif" else 8), err  # lossy codecs, but the same picture
    # the moving square is where it should be in every frame (catches frame order / flips)
    for i in range(6):
        assert back[i, 14, 10 + 6 * i].min() > 200
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_mp4_odd_size_and_uint8(tmp_path):
    frames = to_uint8(_frames(t=3, h=31, w=45))
    path = write_video(frames, tmp_path / "odd.mp4", fps=24)
    back = read_video(path)
    assert back.shape[0] == 3 and back.shape[1:3] == (32, 46)  # padded to even by edge repetition


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "keep.gif"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), target)
    with pytest.raises(ValueError):
        write_video(_frames(), tmp_path / "x.avi")
    with pytest.raises(ValueError):
        write_video(np.zeros((2, 8, 8, 3), np.int32), target)
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*tmp*"))


def test_write_image(tmp_path):
    frame = _frames(t=1)[0]
    p = write_image(frame, tmp_path / "sub" / "still.png")
    from PIL import Image

    with Image.open(p) as im:
        assert im.size == (48, 32)
        assert np.abs(np.asarray(im).astype(int) - to_uint8(frame).astype(int)).max() == 0
    with pytest.raises(ValueError):
        write_image(frame, tmp_path / "x.bmp")
