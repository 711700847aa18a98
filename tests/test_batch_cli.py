"""``python -m lgm_core batch`` on tiny models (CPU): one process, resume, and two gloo processes that split
the items and give the same objects as one process (seed per item, not per process)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lgm_core.cli import main
from lgm_core.testing import make_tiny_pipeline_folder, tiny_lgm_config

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a ceramic owl", "# a comment", "", "a red chair", "a wooden boat!", "a teapot"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from lgm_core.models.lgm import LGM
    from lgm_core.weights import save_lgm

    root = tmp_path_factory.mktemp("batch_models")
    torch.manual_seed(0)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"mv": make_tiny_pipeline_folder(root / "mvdream", "mvdream"),
            "lgm": save_lgm(LGM(tiny_lgm_config()), root / "lgm.safetensors"), "prompts": prompts}


def _args(models, out):
    return ["batch", "--prompts", str(models["prompts"]), "-o", str(out), "--mv-model", str(models["mv"]),
            "--lgm-weights", str(models["lgm"]), "--steps", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def single_run(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_single")
    assert main(_args(models, out)) == 0
    return out


def _positions(folder: Path) -> np.ndarray:
    from lgm_core.ply import load_ply

    return load_ply(folder / "gaussians.ply").positions.numpy()


def test_one_process_writes_every_item_and_resumes(models, single_run, capsys):
    names = sorted(p.name for p in single_run.iterdir() if p.is_dir())
    assert names == ["0000_a-ceramic-owl", "0001_a-red-chair", "0002_a-wooden-boat", "0003_a-teapot"]
    for n in names:
        assert (single_run / n / "views.png").is_file() and (single_run / n / "gaussians.ply").stat().st_size > 1000
    summary = json.loads((single_run / "batch.json").read_text())
    assert summary["done"] == 4 and summary["processes"] == 1 and summary["objects_per_s"] > 0
    assert not list(single_run.glob(".batch_process*"))
    # different seeds per item: different objects
    assert not np.array_equal(_positions(single_run / names[0]), _positions(single_run / names[1]))
    capsys.readouterr()
    assert main(_args(models, single_run)) == 0  # rerun: everything already there
    assert "4 already done" in capsys.readouterr().err
    assert json.loads((single_run / "batch.json").read_text())["skipped"] == 4


def test_bad_lists_are_one_line_errors(models, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    base = _args(models, tmp_path / "o")
    assert main(base[:2] + [str(empty)] + base[3:]) == 2
    assert "lists no prompts" in capsys.readouterr().err
    assert main(base[:2] + [str(tmp_path / "missing.txt")] + base[3:]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["batch", "--images", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_items_and_match_one_process(models, single_run, tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "lgm_core"] + _args(models, out)
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "batch.json").read_text())
    assert summary["processes"] == 2 and summary["done"] == 4
    assert sorted({r["process"] for r in summary["results"]}) == [0, 1]
    assert [r["index"] for r in summary["results"]] == [0, 1, 2, 3]
    for r in summary["results"]:
        np.testing.assert_allclose(_positions(out / r["name"]), _positions(single_run / r["name"]), atol=1e-5)


def test_batched_items_match_one_at_a_time(models, single_run, tmp_path, capsys):
    """--batch-size 3 samples items in batched diffusion + LGM calls (4 items: a batch of 3, then 1) and
    gives the objects of one-at-a-time sampling (each item's noise from its own seed); batch.json records
    the batch sizes and a span that covers the file writing."""
    out = tmp_path / "batched"
    assert main(_args(models, out) + ["--batch-size", "3"]) == 0
    err = capsys.readouterr().err
    assert "3/4" in err and "4/4" in err and "ETA" in err
    summary = json.loads((out / "batch.json").read_text())
    assert [r["batch"] for r in summary["results"]] == [3, 3, 3, 1]
    assert all(r["finished"] >= r["started"] for r in summary["results"]) and summary["objects_per_s"] > 0
    for r in summary["results"]:
        np.testing.assert_allclose(_positions(out / r["name"]), _positions(single_run / r["name"]), atol=1e-4)
    assert main(_args(models, tmp_path / "bad") + ["--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
