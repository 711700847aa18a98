"""CLI ``text-to-3d`` / ``image-to-3d`` end to end on tiny models (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lgm_core.cli import main
from lgm_core.testing import make_tiny_pipeline_folder, tiny_lgm_config


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_dir):
    lgm_mod = pytest.importorskip("lgm_core.models.lgm")
    weights = pytest.importorskip("lgm_core.weights")
    root = tmp_path_factory.mktemp("cli_models")
    torch.manual_seed(0)
    lgm = lgm_mod.LGM(tiny_lgm_config())
    lgm_path = weights.save_lgm(lgm, root / "lgm_tiny.safetensors")
    return {"mvdream": make_tiny_pipeline_folder(root / "mvdream", "mvdream"),
            "imagedream": make_tiny_pipeline_folder(root / "imagedream", "imagedream"),
            "lgm": lgm_path}


def _common(models, kind, out):
    return ["-o", str(out), "--mv-model", str(models[kind]), "--lgm-weights", str(models["lgm"]),
            "--steps", "1", "--device", "cpu", "--turntable-frames", "2", "--turntable-size", "32"]


def test_text_to_3d(models, tmp_path, capsys):
    out = tmp_path / "owl"
    assert main(["text-to-3d", "a ceramic owl"] + _common(models, "mvdream", out)) == 0
    assert (out / "gaussians.ply").stat().st_size > 1000
    assert (out / "views.png").is_file()
    err = capsys.readouterr().err
    assert "diffusion 1/1 steps 100%" in err
    try:
        import lgm_core.render  # noqa: F401
        import lgm_core.video  # noqa: F401
    except ImportError:
        return
    assert (out / "turntable.mp4").is_file() or "skipping turntable" in err


def test_image_to_3d(models, tmp_path):
    from PIL import Image

    rgba = np.zeros((96, 80, 4), np.uint8)
    rgba[20:70, 15:60] = (200, 80, 40, 255)
    Image.fromarray(rgba).save(tmp_path / "photo.png")
    out = tmp_path / "res"
    args = ["image-to-3d", str(tmp_path / "photo.png")] + _common(models, "imagedream", out) + ["--turntable-frames", "0"]
    assert main(args) == 0
    assert (out / "gaussians.ply").is_file() and (out / "views.png").is_file()
    assert not (out / "turntable.mp4").exists()


def test_errors(models, tmp_path, capsys):
    assert main(["image-to-3d", str(tmp_path / "missing.png")] + _common(models, "imagedream", tmp_path / "o")) == 2
    assert "missing.png" in capsys.readouterr().err
    # wrong model kind for the command
    assert main(["text-to-3d", "owl"] + _common(models, "imagedream", tmp_path / "o")) == 2
    assert "ImageDream" in capsys.readouterr().err
    assert main(["text-to-3d", "owl"] + _common(models, "mvdream", tmp_path / "o")[:-8] + ["--mv-model", str(tmp_path)]) == 2
