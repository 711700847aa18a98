"""The issue's end-to-end contract on CPU: meshes the test makes (trimesh primitives with vertex colours)
-> ``prepare-data`` -> ``train`` (tiny-test, 30 steps) -> the loss falls and RUN/model.safetensors loads strictly."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("accelerate", reason="training needs accelerate (pip install -e .[train])")
trimesh = pytest.importorskip("trimesh")

from lgm_core import load_lgm  # noqa: E402
from lgm_core.cli import main as cli_main  # noqa: E402
from lgm_core.training.config import load_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def _primitives(folder):
    rng = np.random.default_rng(0)
    shapes = [trimesh.creation.box((0.9, 0.5, 0.4)), trimesh.creation.icosphere(2, radius=0.5),
              trimesh.creation.cylinder(0.3, 1.0, sections=24), trimesh.creation.cone(0.45, 0.9, sections=24),
              trimesh.creation.capsule(0.6, 0.25), trimesh.creation.box((0.3, 0.9, 0.6))]
    for i, mesh in enumerate(shapes):
        mesh.visual.vertex_colors = np.concatenate(
            [(rng.uniform(0.1, 0.9, (1, 3)) + 0.1 * rng.standard_normal((len(mesh.vertices), 3))).clip(0, 1) * 255,
             np.full((len(mesh.vertices), 1), 255)], 1).astype(np.uint8)
        mesh.export(folder / f"shape{i}.ply")


def test_prepare_data_then_train_loss_falls_and_loads(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    _primitives(meshes)
    data = tmp_path / "data"
    assert cli_main(["prepare-data", str(meshes), "-o", str(data), "--views", "8", "--ring", "4", "--size", "64",
                     "--device", "cpu"]) == 0
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(data), "--output", str(run), "--config", "tiny-test", "--steps", "30",
                     "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 30
    first = np.mean([r["loss"] for r in rows[:5]])
    last = np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.75 * first, (first, last)
    model = load_lgm(run / "model.safetensors", device="cpu")
    assert model.config == load_config("tiny-test").model
