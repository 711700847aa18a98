"""``python -m lgm_core reconstruct`` end to end with a small stand-in checkpoint."""

import subprocess
import sys

import pytest
import torch

from lgm_core.testing import tiny_lgm_config
from lgm_core import LGM, load_ply
from lgm_core.cli import main
from lgm_core.preprocess import make_grid
from lgm_core.image_io import write_image as save_image
from lgm_core.weights import save_lgm

MICRO = tiny_lgm_config()  # ~1 M parameters, same blocks as the presets


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    weights = save_lgm(LGM(MICRO), root / "model_fp16_fixrot.safetensors", dtype=torch.float16)
    views = torch.rand(4, 64, 64, 3)
    paths = [save_image(v, root / f"v{i}.png") for i, v in enumerate(views)]
    grid = save_image(make_grid(views), root / "grid.png")
    return root, weights, paths, grid


def test_reconstruct_four_views_and_grid(setup):
    root, weights, paths, grid = setup
    out = root / "out.ply"
    assert main(["reconstruct", *map(str, paths), "-o", str(out), "--weights", str(weights), "--device", "cpu"]) == 0
    a = load_ply(out)
    assert a.num_gaussians > 0 and a.num_gaussians <= 16384
    out2 = root / "grid.ply"
    assert main(["reconstruct", str(grid), "-o", str(out2), "--weights", str(root), "--elevation", "0"]) == 0
    b = load_ply(out2)
    assert torch.allclose(a.positions, b.positions, atol=1e-5)  # same views, same result


def test_bad_input_exits_2_with_one_line(setup, capsys):
    root, weights, paths, _ = setup
    assert main(["reconstruct", *map(str, paths[:3]), "-o", str(root / "x.ply"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exactly 4 view images or 1 grid" in err[0]
    assert main(["reconstruct", str(root / "missing.png"), "-o", str(root / "x.ply")]) == 2
    assert not (root / "x.ply").exists()


def test_help_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "lgm_core", "reconstruct", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--elevation" in r.stdout and "--weights" in r.stdout
