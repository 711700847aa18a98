"""PLY writing (byte-exact vs the original) and robust reading."""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lgm_core import Gaussians
from lgm_core.ply import PlyError, load_ply, ply_bytes, save_ply

FIELDS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
          "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.fixture(scope="module")
def ref(ref_dir):
    return ref_dir / "lgm_tiny"


@pytest.mark.parametrize("tensors,ply", [("output.safetensors", "gaussians.ply"),
                                         ("ply_prune_case.safetensors", "gaussians_prune_case.ply")])
def test_save_ply_is_byte_identical(ref, tmp_path, tensors, ply):
    """Byte for byte equal to the original's save_ply output. The log columns (opacity logit, log-scales)
    come from torch's CPU log, which is MKL's vectorised log: its last bit depends on the code path MKL
    picks for the CPU (AVX-512 on Intel, another on AMD), so the reference files, written on a machine
    whose MKL took the generic path, are reproduced exactly in a process run with MKL_CBWR=COMPATIBLE
    (MKL's conditional numerical reproducibility). The writer itself runs here unchanged."""
    out = tmp_path / "sub" / "g.ply"
    code = ("import sys; from safetensors.torch import load_file; from lgm_core import Gaussians, save_ply; "
            "save_ply(Gaussians.from_lgm_tensor(load_file(sys.argv[1])['gaussians']), sys.argv[2])")
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code, str(ref / tensors), str(out)], check=True, env=env, timeout=300)
    assert out.read_bytes() == (ref / ply).read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name != "g.ply"]  # no temp files left


@pytest.mark.parametrize("tensors,ply", [("output.safetensors", "gaussians.ply")])
def test_save_ply_in_process_matches_to_the_last_ulp(ref, tmp_path, tensors, ply):
    """In this process (whatever MKL path the CPU gets) the file differs from the reference at most in the
    last bit of the log columns: same header, same positions, colours and rotations bit for bit."""
    g = Gaussians.from_lgm_tensor(load_file(str(ref / tensors))["gaussians"])
    out = tmp_path / "g.ply"
    save_ply(g, out)
    mine, theirs = out.read_bytes(), (ref / ply).read_bytes()
    head = theirs.index(b"end_header\n") + len(b"end_header\n")
    assert mine[:head] == theirs[:head] and len(mine) == len(theirs)
    a = np.frombuffer(mine[head:], "<i4").reshape(-1, 14).astype(np.int64)
    b = np.frombuffer(theirs[head:], "<i4").reshape(-1, 14).astype(np.int64)
    exact = [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]  # x y z, f_dc, rot
    assert (a[:, exact] == b[:, exact]).all()
    assert np.abs(a[:, 6:10] - b[:, 6:10]).max() <= 1  # opacity logit and log-scales: <= 1 ulp


def test_load_reference_ply(ref):
    expected = load_file(str(ref / "output.safetensors"))["gaussians"]
    g = load_ply(ref / "gaussians.ply")
    assert g.num_gaussians == 16384 and g.normalized_rotations
    assert (g.to_lgm_tensor() - expected).abs().max() < 1e-6
    pruned = load_ply(ref / "gaussians_prune_case.ply")
    assert pruned.num_gaussians == 13107


def write_ply(path, columns, fmt="binary_little_endian", extra_header="", before=b"", dtype="f4"):
    names = list(columns)
    n = len(next(iter(columns.values())))
    head = ["ply", f"format {fmt} 1.0"]
    if extra_header:
        head.append(extra_header)
    head.append(f"element vertex {n}")
    head += [f"property {'float' if dtype == 'f4' else 'double'} {k}" for k in names]
    head.append("end_header")
    body = np.stack([np.asarray(columns[k], dtype=np.float64) for k in names], axis=1)
    if fmt == "ascii":
        data = "\n".join(" ".join(repr(float(v)) for v in row) for row in body).encode() + b"\n"
    else:
        data = body.astype(("<" if fmt == "binary_little_endian" else ">") + dtype).tobytes()
    path.write_bytes(("\n".join(head) + "\n").encode() + before + data)
    return path


def standard_columns(n=5, rest=0, seed=0):
    rng = np.random.default_rng(seed)
    cols = {k: rng.normal(size=n) for k in FIELDS}
    cols = {"nx": np.zeros(n), "ny": np.zeros(n), "nz": np.zeros(n), **cols}
    for i in range(rest):
        cols[f"f_rest_{i}"] = rng.normal(size=n)
    cols["custom_flag"] = np.ones(n)
    return cols


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
@pytest.mark.parametrize("degree,rest", [(0, 0), (1, 9), (2, 24), (3, 45)])
def test_load_standard_3dgs(tmp_path, fmt, degree, rest):
    cols = standard_columns(rest=rest)
    g = load_ply(write_ply(tmp_path / "s.ply", cols, fmt=fmt, dtype="f8" if fmt == "ascii" else "f4"))
    assert g.sh.shape == (1, 5, (degree + 1) ** 2, 3) and g.sh_degree == degree
    assert np.allclose(g.positions[0, :, 0].numpy(), cols["x"], atol=1e-6)
    assert np.allclose(g.opacities[0, :, 0].numpy(), 1 / (1 + np.exp(-cols["opacity"])), atol=1e-6)
    assert np.allclose(g.scales[0, :, 1].numpy(), np.exp(cols["scale_1"]), rtol=1e-5)
    assert torch.allclose(g.rotations.norm(dim=-1), torch.ones(1), atol=1e-5)  # standard files get normalised
    if rest:
        k = (degree + 1) ** 2 - 1  # channel-major: f_rest_[c*(K-1) + j]
        assert np.isclose(g.sh[0, 0, 1, 0].item(), cols["f_rest_0"][0], atol=1e-6)
        assert np.isclose(g.sh[0, 0, 1, 1].item(), cols[f"f_rest_{k}"][0], atol=1e-6)
        out = tmp_path / "again.ply"
        save_ply(g, out, min_opacity=0.0)
        back = load_ply(out)
        assert torch.allclose(back.sh, g.sh, atol=1e-6)


def test_element_before_vertex_is_skipped(tmp_path):
    cols = standard_columns()
    p = write_ply(tmp_path / "e.ply", cols, extra_header="element camera 2\nproperty float fx\nproperty double fy",
                  before=np.zeros(2, dtype=[("fx", "<f4"), ("fy", "<f8")]).tobytes())
    text = p.read_bytes()
    assert text.index(b"element camera") < text.index(b"element vertex")
    g = load_ply(p)
    assert g.num_gaussians == 5 and np.allclose(g.positions[0, :, 0].numpy(), cols["x"], atol=1e-6)


def test_legacy_quaternions_kept_raw(tmp_path):
    cols = standard_columns(n=200)
    for k in ("rot_0", "rot_1", "rot_2", "rot_3"):
        cols[k] = cols[k] * 1e-3
    g = load_ply(write_ply(tmp_path / "l.ply", cols))
    assert not g.normalized_rotations and g.rotations.norm(dim=-1).max() < 0.1
    assert load_ply(tmp_path / "l.ply", normalized_rotations=True).normalized_rotations


def test_malformed_files_give_clear_errors(tmp_path):
    good = write_ply(tmp_path / "good.ply", standard_columns()).read_bytes()
    cases = {
        "notply": (b"hello world", "not a PLY"),
        "noend": (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n", "end_header"),
        "truncated": (good[:-7], "truncated"),
        "liar": (good.replace(b"element vertex 5", b"element vertex 999999999999"), "truncated"),
        "badformat": (good.replace(b"binary_little_endian", b"binary_middle_endian"), "format"),
        "badprop": (good.replace(b"property float x", b"property quaternion x"), "property"),
        "noformat": (good.replace(b"format binary_little_endian 1.0\n", b""), "format"),
    }
    for name, (data, match) in cases.items():
        p = tmp_path / f"{name}.ply"
        p.write_bytes(data)
        with pytest.raises(PlyError, match=match):
            load_ply(p)
    cols = standard_columns()
    del cols["opacity"]
    with pytest.raises(PlyError, match="missing vertex properties opacity"):
        load_ply(write_ply(tmp_path / "missing.ply", cols))
    cols = standard_columns(rest=5)
    with pytest.raises(PlyError, match="f_rest"):
        load_ply(write_ply(tmp_path / "rest.ply", cols))
    ascii_bad = write_ply(tmp_path / "a.ply", standard_columns(), fmt="ascii", dtype="f8").read_bytes()
    (tmp_path / "a_short.ply").write_bytes(ascii_bad.rsplit(b"\n", 3)[0])
    with pytest.raises(PlyError, match="truncated"):
        load_ply(tmp_path / "a_short.ply")
    cols = standard_columns()
    cols["x"][0] = np.nan
    with pytest.raises(PlyError, match="NaN"):
        load_ply(write_ply(tmp_path / "nan.ply", cols))
    with pytest.raises(FileNotFoundError):
        load_ply(tmp_path / "absent.ply")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    x = torch.rand(1, 4, 14)
    g = Gaussians.from_lgm_tensor(x)
    path = tmp_path / "keep.ply"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_ply(g, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["keep.ply"]


def test_padded_batch_item_saves_only_real_gaussians(tmp_path):
    x = torch.rand(2, 6, 14)
    x[..., 3] = 0.9
    g = Gaussians.from_lgm_tensor(x)
    g.opacities[1, 3:, 0] = 0.0
    p = g.prune()
    save_ply(p, tmp_path / "b1.ply", index=1)
    assert load_ply(tmp_path / "b1.ply").num_gaussians == 3
