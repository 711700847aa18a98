"""``python -m lgm_core render``: turntable video and stills from a .ply."""

from __future__ import annotations

import numpy as np
import pytest

from lgm_core.cli import main
from lgm_core.ply import save_ply
from lgm_core.render.scenes import axis_markers, blob_scene
from lgm_core.video import read_video


@pytest.fixture()
def ply(tmp_path):
    from lgm_core.gaussians import Gaussians

    g = Gaussians.cat([blob_scene(300, seed=0), axis_markers()], dim=1)
    path = tmp_path / "scene.ply"
    save_ply(g, path)
    return path


def test_turntable_mp4(ply, tmp_path):
    out = tmp_path / "spin.mp4"
    assert main(["render", str(ply), "--turntable", "3", "--size", "32", "-o", str(out), "--device", "cpu"]) == 0
    frames = read_video(out)
    assert frames.shape == (3, 32, 32, 3)
    assert frames[:, 0, 0].min() > 240  # white background


def test_stills_and_transparency(ply, tmp_path):
    from PIL import Image

    out = tmp_path / "view.png"
    assert main(["render", str(ply), "--views", "0", "90", "--size", "32", "-o", str(out),
                 "--transparent", "--device", "cpu"]) == 0
    paths = [tmp_path / "view_az000.png", tmp_path / "view_az090.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.mode == "RGBA" and im.size == (32, 32)
            a = np.asarray(im)[..., 3]
            assert a[0, 0] == 0 and a[16, 16] > 200
    folder = tmp_path / "stills"
    assert main(["render", str(ply), "--views", "45", "--size", "16", "-o", str(folder),
                 "--background", "0,0,0", "--device", "cpu"]) == 0
    assert (folder / "view_az045.png").exists()


def test_user_errors(ply, tmp_path, capsys):
    assert main(["render", str(tmp_path / "missing.ply"), "--views", "0", "-o", str(tmp_path / "a.png")]) == 2
    assert main(["render", str(ply), "--turntable", "4", "-o", str(tmp_path / "a.png")]) == 2
    assert main(["render", str(ply), "--views", "0", "--background", "pink", "-o", str(tmp_path / "a.png")]) == 2
    assert "error:" in capsys.readouterr().err
