"""The NaN/Inf policy (docs/robustness.md): every reader, writer, the renderer and the mesher reject
Gaussians with NaN/Inf values with a message that counts them; outputs never contain NaN
(issue 14 item 4)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lgm_core.cameras import Cameras
from lgm_core.gaussians import Gaussians, InvalidGaussiansError, check_finite, drop_invalid, invalid_mask
from lgm_core.mesh import Mesh, extract_mesh
from lgm_core.mesh.synthetic import make_scene
from lgm_core.ply import PlyError, load_ply, save_ply
from lgm_core.render import render
from lgm_core.splat_formats import SplatError, load_splat, save_splat

FIELDS = ("positions", "scales", "rotations", "opacities", "sh")


def _scene(n=600, seed=0):
    return make_scene("sphere", n=n, seed=seed)


def _poison(g: Gaussians, field: str, index: int = 3, value=float("nan")) -> Gaussians:
    g = g.clone()
    getattr(g, field)[0, index].view(-1)[0] = value
    return g


def test_check_finite_counts_per_field():
    g = _poison(_poison(_scene(), "sh", 1), "scales", 2, float("inf"))
    assert invalid_mask(g).sum() == 2
    with pytest.raises(InvalidGaussiansError, match=r"x: 2 of 600 Gaussians have NaN/Inf values \(scale 1, colour 1\)"):
        check_finite(g, "x")
    assert check_finite(_scene(), "x").num_gaussians == 600
    padded = Gaussians.cat([_scene(10), _scene(20, seed=1)])  # padding (opacity 0) is never counted
    assert not bool(invalid_mask(padded).any())


def test_drop_invalid_is_explicit_and_counts(caplog):
    g = _poison(_scene(), "opacities", 5)
    with caplog.at_level(logging.WARNING, logger="lgm_core"):
        kept = drop_invalid(g, "salvage")
    assert kept.num_gaussians == 599 and "dropped 1 invalid Gaussians" in caplog.text
    everything = g.clone()
    everything.positions[:] = float("nan")
    with pytest.raises(InvalidGaussiansError, match="no valid Gaussian left"):
        drop_invalid(everything, "salvage")


@pytest.mark.parametrize("field", FIELDS)
def test_every_writer_refuses_nan_and_keeps_the_old_file(tmp_path, field):
    g = _poison(_scene(), field)
    for name, save in (("g.ply", save_ply), ("g.splat", save_splat)):
        target = tmp_path / name
        target.write_bytes(b"old")
        with pytest.raises(InvalidGaussiansError, match=f"cannot write {target}: 1 of 600 Gaussians"):
            save(g, target, min_opacity=0.0)
        assert target.read_bytes() == b"old"


def test_writers_refuse_negative_scales_and_bad_min_opacity(tmp_path):
    g = _scene()
    g.scales[0, 0, 1] = -0.01  # log() of it would be NaN in the file
    with pytest.raises(InvalidGaussiansError, match="negative scale or zero-length rotation 1"):
        save_ply(g, tmp_path / "g.ply")
    with pytest.raises(ValueError, match="min_opacity"):
        save_ply(_scene(), tmp_path / "g.ply", min_opacity=float("nan"))
    assert not (tmp_path / "g.ply").exists()


def test_saved_files_always_load(tmp_path):
    """What save_ply writes, load_ply reads (the campaign found files save_ply wrote and load_ply refused)."""
    g = _scene()
    g.opacities[0, :10] = 0.001  # pruned by min_opacity: fine
    save_ply(g, tmp_path / "g.ply")
    assert load_ply(tmp_path / "g.ply").num_gaussians == 590


@pytest.mark.parametrize("column,value", [("x", np.nan), ("f_dc_1", np.nan), ("opacity", np.nan), ("scale_2", np.nan),
                                          ("rot_3", np.nan), ("scale_0", 88.8), ("scale_1", np.inf)])
def test_load_ply_rejects_nan_in_every_field(tmp_path, column, value, caplog):
    from fuzz_corpus import _set_value, ply_file

    path = tmp_path / "bad.ply"
    path.write_bytes(_set_value(ply_file(n=20), 4, column.encode(), value))
    with pytest.raises(PlyError, match=r"bad.ply: 1 of 20 Gaussians have NaN/Inf values"):
        load_ply(path)
    with caplog.at_level(logging.WARNING, logger="lgm_core"):
        g = load_ply(path, on_invalid="drop")
    assert g.num_gaussians == 19 and "dropped 1" in caplog.text
    assert all(bool(torch.isfinite(getattr(g, f)).all()) for f in FIELDS)


def test_load_splat_rejects_bad_records(tmp_path):
    from fuzz_corpus import splat_file

    data = bytearray(splat_file(n=40))
    data[0:4] = np.float32(np.nan).tobytes()  # NaN position
    data[32 + 12:32 + 16] = np.float32(-0.5).tobytes()  # negative scale
    data[64 + 28:64 + 32] = bytes([128, 128, 128, 128])  # zero quaternion
    path = tmp_path / "bad.splat"
    path.write_bytes(bytes(data))
    with pytest.raises(SplatError, match=r"3 of 40 Gaussians are invalid \(position 1, negative scale or non-unit "
                                         r"rotation 2\)"):
        load_splat(path)
    assert load_splat(path, on_invalid="drop").num_gaussians == 37


def test_splat_reader_refuses_other_files(tmp_path):
    """The first 32,000 bytes of a .ply used to load as 1,000 Gaussians (item 5)."""
    save_ply(_scene(n=2000), tmp_path / "g.ply")
    path = tmp_path / "g.splat"
    path.write_bytes((tmp_path / "g.ply").read_bytes()[:32000])
    with pytest.raises(SplatError, match="this is a PLY file"):
        load_splat(path)
    path.write_bytes((tmp_path / "g.ply").read_bytes()[1000:1000 + 32000])  # PLY data without its header
    with pytest.raises(SplatError, match="are invalid"):
        load_splat(path, on_invalid="drop")
    path.write_bytes(np.random.default_rng(0).bytes(32 * 100))
    with pytest.raises(SplatError):
        load_splat(path, on_invalid="drop")


def test_render_refuses_nan_and_never_returns_nan():
    cams = Cameras.orbit(0.0, [0.0, 90.0], size=48)
    for field in FIELDS:
        with pytest.raises(InvalidGaussiansError, match="render: 1 of 600"):
            render(_poison(_scene(), field), cams, backend="torch")
    with pytest.raises(ValueError, match="background"):
        render(_scene(), cams, background=(float("nan"),) * 3, backend="torch")
    with pytest.raises(ValueError, match="NaN"):
        Cameras(torch.full((1, 4, 4), float("nan")))
    # huge but finite values are legal and still give finite images in [0, 1]
    g = _scene()
    g.positions[0, 0] = torch.tensor([1e30, 0.0, 0.0])
    g.positions[0, 1] = torch.tensor([0.0, 0.0, 1e19])
    g.scales[0, 2] = 1e20
    g.sh[0, 3] = 1e30
    out = render(g, cams, backend="torch")
    for t in (out.image, out.alpha, out.depth):
        assert bool(torch.isfinite(t).all())
    assert float(out.image.min()) >= 0 and float(out.image.max()) <= 1


def test_mesher_refuses_nan():
    with pytest.raises(InvalidGaussiansError, match="extract_mesh: 1 of"):
        extract_mesh(_poison(_scene(), "sh"), resolution=32, texture=False)


def test_mesh_export_refuses_nan(tmp_path):
    m = Mesh(torch.rand(4, 3), torch.tensor([[0, 1, 2], [0, 2, 3]]), vertex_colors=torch.rand(4, 3))
    m.vertices[1, 0] = float("nan")
    for ext in (".glb", ".obj", ".ply"):
        with pytest.raises(ValueError, match="NaN/Inf values \\(vertices 1\\)"):
            m.export(tmp_path / f"m{ext}")
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_with_nan_output_writes_nothing(tmp_path, monkeypatch, capsys):
    """A model that outputs NaN (e.g. NaN weights) used to exit 0 with `element vertex 0`."""
    from lgm_core.cli import main
    from lgm_core.models.lgm import LGM
    from lgm_core.testing import make_standin_lgm
    from lgm_core.image_io import write_image

    ckpt = make_standin_lgm(tmp_path / "model_fp16_fixrot.safetensors")
    views = [write_image(torch.rand(64, 64, 3), tmp_path / f"v{i}.png") for i in range(4)]
    real = LGM.forward_gaussians

    def nan_forward(self, x):
        return real(self, x) * float("nan")

    monkeypatch.setattr(LGM, "forward_gaussians", nan_forward)
    out = tmp_path / "g.ply"
    rc = main(["reconstruct", *map(str, views), "-o", str(out), "--weights", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN/Inf" in err and not out.exists(), err
    rc = main(["reconstruct", *map(str, views), "-o", str(out), "--weights", str(ckpt), "--elevation", "nan"])
    assert rc == 2 and "--elevation" in capsys.readouterr().err and not out.exists()


def test_nan_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from lgm_core.testing import make_standin_lgm
    from lgm_core.weights import CheckpointError, load_lgm

    path = make_standin_lgm(tmp_path / "model_fp16_fixrot.safetensors")
    state = load_file(str(path))
    key = sorted(state)[3]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        load_lgm(path, device="cpu")
