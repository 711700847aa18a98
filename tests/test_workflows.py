"""Every shipped workflow's API twin runs in a real (in-process) ComfyUI on stand-in models with the
real file names; outputs exist and are sane (ply loads, glb loads in trimesh, images have the right
shapes). On CPU only the cost knobs in CPU_COST_OVERRIDES are lowered."""

from __future__ import annotations

import json

import pytest

from comfy_harness import (API_DIR, CPU_COST_OVERRIDES, WORKFLOW_DIR, harness, load_api_workflow,  # noqa: F401
                           workflow_names, write_example_inputs)
from workflow_graphs import CORES, WORKFLOWS  # scripts/ (on sys.path through comfy_harness)

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_core")]  # once per ComfyUI core

EXPECTED = set(WORKFLOWS)
OUT_OF_THE_BOX = {"lgm_demo_views_to_3d", "lgm_demo_core3d"}
"""Graphs that need nothing but the pack: no input files, no model downloads."""
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def test_shipped_workflows_have_twins():
    assert set(workflow_names()) == EXPECTED
    for name in EXPECTED:
        ui = json.loads((WORKFLOW_DIR / f"{name}.json").read_text())
        assert "nodes" in ui and "links" in ui, f"{name}.json is not a UI-format workflow"
        api = json.loads((API_DIR / f"{name}.json").read_text())
        assert {str(n["id"]) for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY} == set(api)


@pytest.fixture(scope="module")
def inputs(harness):
    return write_example_inputs(harness.input_dir)


def _check_outputs(harness, name, result):
    import trimesh
    from PIL import Image

    from lgm_core.ply import load_ply

    prompt = load_api_workflow(name)
    by_type = {}
    for node_id, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node_id)
    for node_id in by_type.get("LGMSaveSplat", []):
        (record,) = result.files(node_id)
        g = load_ply(harness.output_path(record))
        assert g.num_gaussians > 100 and g.positions.isfinite().all()
    for node_id in by_type.get("SaveGLB", []):
        (record,) = result.files(node_id, "3d")
        mesh = trimesh.load(harness.output_path(record), force="mesh")
        assert len(mesh.faces) > 10
    if by_type.get("PreviewGaussianSplat"):  # the viewer's file, written to the temp folder
        shown = sorted(harness.temp_dir.glob("preview_splat_*.spz"), key=lambda p: p.stat().st_mtime)
        assert shown and shown[-1].stat().st_size > 1000
    for node_id in by_type.get("LGMSaveMesh", []):
        (record,) = result.files(node_id, "3d")
        path = harness.output_path(record)
        assert path.suffix == ".glb"
        mesh = trimesh.load(path, force="mesh")
        assert len(mesh.faces) > 10 and len(mesh.vertices) > 10
    for node_id in by_type.get("SaveAnimatedWEBP", []):
        (record,) = result.files(node_id, "images")
        with Image.open(harness.output_path(record)) as im:
            frames = getattr(im, "n_frames", 1)
            assert im.size == (CPU_COST_OVERRIDES["width"], CPU_COST_OVERRIDES["height"])
        assert frames == CPU_COST_OVERRIDES["num_frames"]
    for node_id in by_type.get("PreviewImage", []):
        records = result.files(node_id, "images")
        source = prompt[node_id]["inputs"]["images"][0]
        four_views = prompt[source]["class_type"].endswith("MultiView") or prompt[source]["class_type"] == "LGMExampleViews"
        expected = 4 if four_views else CPU_COST_OVERRIDES["num_frames"]
        assert len(records) == expected
        size = (256, 256) if expected == 4 else (CPU_COST_OVERRIDES["width"], CPU_COST_OVERRIDES["height"])
        for r in records:
            path = harness.temp_dir / r["subfolder"] / r["filename"]
            with Image.open(path) as im:
                assert im.size == size


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_runs(harness, inputs, name):
    if harness.paths.core not in CORES[name]:
        pytest.skip(f"{name} needs ComfyUI {' or '.join(CORES[name])} (core 3D nodes)")
    prompt = load_api_workflow(name, CPU_COST_OVERRIDES)
    result = harness.run(prompt)
    assert result.success
    _check_outputs(harness, name, result)


@pytest.mark.parametrize("name", sorted(OUT_OF_THE_BOX))
def test_demo_workflows_run_on_a_fresh_install(harness, name, tmp_path):
    """With an empty input folder and no models in models/lgm (a fresh ComfyUI with only the pack), the
    demo graphs run as shipped except the CPU cost knobs."""
    import folder_paths

    if harness.paths.core not in CORES[name]:
        pytest.skip(f"{name} needs ComfyUI {' or '.join(CORES[name])}")
    saved_input = folder_paths.get_input_directory()
    saved_lgm = list(folder_paths.folder_names_and_paths["lgm"][0])
    (tmp_path / "empty_input").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "empty_input"))
    folder_paths.folder_names_and_paths["lgm"][0][:] = [str(tmp_path / "no_models")]
    try:
        result = harness.run(load_api_workflow(name, CPU_COST_OVERRIDES))
    finally:
        folder_paths.set_input_directory(saved_input)
        folder_paths.folder_names_and_paths["lgm"][0][:] = saved_lgm
    assert result.success
    _check_outputs(harness, name, result)
