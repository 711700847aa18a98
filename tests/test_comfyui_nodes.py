"""The node pack inside a real ComfyUI (in-process): registration, schemas, model folders, validation,
errors, SPLAT duck typing, progress/preview, interruption, memory management."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_harness import REPO_ROOT, harness  # noqa: F401  (fixture)

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_core")]  # once per ComfyUI core

LGM_NODES = [
    "LGMModelLoader", "LGMMultiViewLoader", "LGMTextToMultiView", "LGMImageToMultiView", "LGMPrepareImage",
    "LGMReconstruct", "LGMOrbitCameras", "LGMRenderSplat", "LGMSaveSplat", "LGMLoadSplat", "LGMSplatToMesh",
    "LGMSaveMesh", "LGMExampleViews",
]


def _text_graph(steps=2, n_views_node=None):
    return {
        "1": {"class_type": "LGMMultiViewLoader",
              "inputs": {"model_name": "mvdream-sd2.1-diffusers", "precision": "auto", "allow_download": False}},
        "2": {"class_type": "LGMTextToMultiView",
              "inputs": {"mv_pipeline": ["1", 0], "prompt": "an owl", "negative_prompt": "", "seed": 3,
                         "steps": steps, "guidance": 7.5, "elevation": 0.0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_every_node_registered_with_schema(harness):
    for node_id in LGM_NODES:
        cls = harness.node_classes.get(node_id)
        assert cls is not None, f"{node_id} not loaded by ComfyUI"
        schema = cls.GET_SCHEMA()
        assert schema.node_id == node_id and " " not in node_id
        assert schema.category == "LGM"
        assert schema.display_name and schema.display_name.startswith("LGM ")
        assert len(schema.description) > 20
        for item in list(schema.inputs) + list(schema.outputs):
            assert item.tooltip, f"{node_id}.{item.id or item.display_name} has no tooltip"


def test_model_folders_list_standin_models(harness):
    import folder_paths

    assert "model_fp16_fixrot.safetensors" in folder_paths.get_filename_list("lgm")
    info = harness.node_classes["LGMMultiViewLoader"].GET_NODE_INFO_V1()
    options = info["input"]["required"]["model_name"][1]["options"]
    assert {"mvdream-sd2.1-diffusers", "imagedream-ipmv-diffusers"} <= set(options)


def test_validation_errors(harness):
    good = _text_graph()
    ok, *_ = harness.validate(good)
    assert ok
    # out of range
    bad = _text_graph(steps=0)
    ok, _err, _outs, node_errors = harness.validate(bad)
    assert not ok and "2" in node_errors
    # unknown model file
    bad = {"1": {"class_type": "LGMModelLoader",
                 "inputs": {"ckpt_name": "nope.safetensors", "precision": "auto", "allow_download": False}},
           "2": {"class_type": "LGMOrbitCameras",
                 "inputs": {"num_frames": 2, "elevation": 0.0, "radius": 1.5, "fovy": 49.1, "width": 64,
                            "height": 64, "start_azimuth": 0.0}},
           "3": {"class_type": "LGMReconstruct",
                 "inputs": {"lgm_model": ["1", 0], "views": ["2", 0], "elevation": 0.0}},
           "4": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["3", 0], "filename_prefix": "x",
                                                          "min_opacity": 0.0}}}
    ok, _err, _outs, node_errors = harness.validate(bad)
    assert not ok
    assert "return_type_mismatch" in str(node_errors) and "LGM_CAMERAS" in str(node_errors)  # cameras into IMAGE
    bad["3"]["inputs"]["views"] = ["5", 0]
    bad["5"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 4, "color": 0}}
    ok, _err, _outs, node_errors = harness.validate(bad)
    assert not ok and "nope.safetensors" in str(node_errors)  # value not in the model list
    # missing required input
    bad = _text_graph()
    del bad["2"]["inputs"]["prompt"]
    ok, _err, _outs, node_errors = harness.validate(bad)
    assert not ok and "2" in node_errors


def test_reconstruct_needs_four_views(harness):
    graph = {
        "1": {"class_type": "LGMModelLoader",
              "inputs": {"ckpt_name": "model_fp16_fixrot.safetensors", "precision": "fp32", "allow_download": False}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0}},
        "3": {"class_type": "LGMReconstruct", "inputs": {"lgm_model": ["1", 0], "views": ["2", 0], "elevation": 0.0}},
        "4": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["3", 0], "filename_prefix": "x", "min_opacity": 0.0}},
    }
    result = harness.run(graph, check=False)
    assert not result.success
    assert "exactly 4 views" in result.error["exception_message"]
    assert "batch of 3" in result.error["exception_message"]


def test_wrong_model_kind_is_explained(harness):
    graph = _text_graph()
    graph["1"]["inputs"]["model_name"] = "imagedream-ipmv-diffusers"
    result = harness.run(graph, check=False)
    assert not result.success and "ImageDream" in result.error["exception_message"]


def test_progress_preview_and_views(harness):
    from comfy.cli_args import LatentPreviewMethod, args

    old = args.preview_method
    args.preview_method = LatentPreviewMethod.Latent2RGB  # 0.3.75: the global --preview-method
    try:  # 0.33: the client's per-prompt choice (it resets the global to the default otherwise)
        result = harness.run(_text_graph(steps=3), extra_data={"preview_method": "latent2rgb"})
    finally:
        args.preview_method = old
    progress = [d for e, d in result.events if e == "progress" and d["node"] == "2"]
    assert [p["value"] for p in progress] == [1, 2, 3] and progress[-1]["max"] == 3
    previews = [d for e, d in result.events if e == "preview" and d["node"] == "2"]
    assert len(previews) == 3
    fmt, image, _size = previews[0]["image"]
    assert fmt == "JPEG" and image.size[0] == image.size[1] > 0  # 2x2 grid of the 4 views
    images = result.files("3", "images")
    assert len(images) == 4
    from PIL import Image

    assert Image.open(harness.output_path(images[0]) if images[0]["type"] == "output"
                      else harness.temp_dir / images[0]["subfolder"] / images[0]["filename"]).size == (256, 256)


def test_interrupt_stops_diffusion(harness, monkeypatch):
    import comfy.model_management as mm

    original = harness._progress_hook

    def hook(value, total, preview, prompt_id=None, node_id=None):
        if value == 1:
            mm.interrupt_current_processing(True)
        return original(value, total, preview, prompt_id, node_id)

    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        result = harness.run(_text_graph(steps=20), check=False)
    finally:
        comfy.utils.set_progress_bar_global_hook(original)
        mm.interrupt_current_processing(False)
    assert not result.success
    assert any(name == "execution_interrupted" for name, _ in result.messages)
    steps_done = [d["value"] for e, d in result.events if e == "progress" and d["node"] == "2"]
    assert max(steps_done, default=0) < 2  # stopped right after the first step


def test_models_are_managed_by_comfyui(harness):
    import comfy.model_management as mm

    harness.run(_text_graph())
    loaded = [m.model for m in mm.current_loaded_models]
    holders = [type(getattr(p, "model", None)).__name__ for p in loaded]
    assert "_Holder" in holders, holders
    mm.unload_all_models()
    assert not mm.current_loaded_models


def test_lgm_loader_gives_the_graph_path_and_frees_it_on_unload(harness, monkeypatch):
    """The LGM the nodes run is on the library's fast path: ``LGM.optimize_for_inference()`` (no
    arguments, the library's default) is called exactly once, after ComfyUI put the weights on the compute
    device (so on a CUDA device the CUDA-graph runner wraps CUDA weights; inert on this CPU), and ComfyUI's
    unload frees the captured graphs (ManagedModel's detach callback)."""
    import comfy.model_management as mm

    from lgm_core.models.lgm import LGM

    calls = []
    real = LGM.optimize_for_inference

    def spy(self, *args, **kwargs):
        calls.append((self.device, args, kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LGM, "optimize_for_inference", spy)
    managed = harness.node_classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "fp32", False).result[0]
    assert not calls and not managed.optimized  # nothing before ComfyUI places the weights
    assert managed.get() is managed.model and any(m.model is managed.patcher for m in mm.current_loaded_models)
    assert calls == [(managed.device, (), {})]  # on the load device, the library's default path
    runner = managed.model._graph_runner
    assert runner is not None and runner.enabled
    assert runner.weights is managed.model  # re-captures when ComfyUI moves these weights
    reconstruct = harness.node_classes["LGMReconstruct"]
    overshoot = torch.rand(4, 64, 64, 3, generator=torch.Generator().manual_seed(0)) * 1.04 - 0.02  # as bicubic
    splat = reconstruct.execute(managed, overshoot, 0.0).result[0]
    assert torch.isfinite(splat.positions).all()
    with pytest.raises(ValueError, match="NaN"):
        reconstruct.execute(managed, torch.full((4, 64, 64, 3), float("nan")), 0.0)
    assert len(calls) == 1 and managed.model._graph_runner is runner  # once per model, not per execution
    runner.graphs["stale"] = object()  # stands in for a graph captured on a GPU
    # ComfyUI's load of an already loaded model detaches it without moving the weights: graphs stay
    mm.load_models_gpu([managed.patcher], force_full_load=True)
    assert "stale" in runner.graphs
    managed.get()
    assert "stale" in runner.graphs
    mm.unload_all_models()
    assert not runner.graphs
    managed.get()  # loaded again: same runner (it notices the moved weights by itself), no second call
    assert len(calls) == 1 and managed.model._graph_runner is runner


def test_resident_model_skips_comfyui_reload(harness, monkeypatch):
    """``ManagedModel.get`` on a model ComfyUI has loaded whole skips ``load_models_gpu`` (whose free-memory
    pass synchronises and may empty the CUDA cache on every node execution) and marks the model as in use
    and most recent, as that call does; a model that is not loaded goes through it."""
    import comfy.model_management as mm

    managed = harness.node_classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "fp32", False).result[0]
    mm.unload_all_models()
    loads = []
    real = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: (loads.append(models), real(models, **kw))[1])
    managed.get()
    assert len(loads) == 1  # not loaded yet: ComfyUI loads it
    other = harness.node_classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "fp16", False).result[0]
    other.get()
    assert mm.current_loaded_models[0].model is other.patcher
    mm.current_loaded_models[1].currently_used = False
    managed.get()
    assert len(loads) == 2  # only `other`'s first load
    assert mm.current_loaded_models[0].model is managed.patcher and mm.current_loaded_models[0].currently_used
    assert sum(entry.model is managed.patcher for entry in mm.current_loaded_models) == 1
    monkeypatch.setattr(type(managed), "resident_fast_path", False)
    managed.get()
    assert len(loads) == 3
    mm.unload_all_models()


def test_dropped_model_frees_its_graphs_at_once(harness, monkeypatch):
    """A model ComfyUI's cache drops dies at once (no reference cycle through its patcher's callbacks):
    its entry leaves ComfyUI's loaded-model list and its captured graphs are released without a gc run."""
    import gc
    import weakref

    import comfy.model_management as mm

    from lgm_core.models.lgm import LGM

    released = []
    monkeypatch.setattr(LGM, "release_cuda_graphs", lambda self: released.append(self))
    managed = harness.node_classes["LGMModelLoader"].execute("model_fp16_fixrot.safetensors", "fp32", False).result[0]
    managed.get()
    patcher = weakref.ref(managed.patcher)
    gc.disable()
    try:
        del managed
        assert patcher() is None and released
        mm.cleanup_models()
        assert not any(entry.model is None or entry.model is patcher() for entry in mm.current_loaded_models)
    finally:
        gc.enable()


def test_core_style_splat_objects_are_accepted(harness, tmp_path):
    """Any object with SPLAT's attributes (e.g. core's SPLAT) works with the pack's SPLAT inputs."""
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import load_ply

    nodes = harness.node_classes
    g = make_scene("sphere", n=2048, seed=1)

    class CoreLikeSplat:  # unbatched tensors, no counts, no lgm_core class
        def __init__(self):
            self.positions, self.scales, self.rotations = g.positions[0], g.scales[0], g.rotations[0]
            self.opacities, self.sh, self.counts = g.opacities[0], g.sh[0], None

    splat = CoreLikeSplat()
    out = nodes["LGMSaveSplat"].execute(splat, "duck/splat", 0.0)
    rel = out.result[0]
    loaded = load_ply(harness.output_dir / rel)
    assert loaded.num_gaussians == 2048
    cams = nodes["LGMOrbitCameras"].execute(2, 0.0, 1.5, 49.1, 48, 32, 0.0).result[0]
    images, alpha, depth = nodes["LGMRenderSplat"].execute(splat, cams, 1.0, 1.0, "normalized").result
    assert images.shape == (2, 32, 48, 3) and alpha.shape == (2, 32, 48) and depth.shape == (2, 32, 48, 3)
    assert float(alpha.max()) > 0.5 and float(images.min()) < 0.9  # the sphere is visible
    # a bad object gets a clear message
    with pytest.raises(ValueError, match="SPLAT"):
        nodes["LGMSaveSplat"].execute(object(), "duck/splat", 0.0)


def test_prepare_image_recentres_on_white(harness):
    nodes = harness.node_classes
    img = torch.zeros(1, 80, 120, 3)
    img[:, 10:30, 20:50] = torch.tensor([1.0, 0.0, 0.0])
    mask = torch.ones(1, 80, 120)
    mask[:, 10:30, 20:50] = 0.0  # LoadImage convention: 1 = transparent
    image, alpha = nodes["LGMPrepareImage"].execute(img, True, 64, 0.2, 1.0, mask=mask).result
    assert image.shape == (1, 64, 64, 3) and alpha.shape == (1, 64, 64)
    assert torch.allclose(image[0, 0, 0], torch.ones(3))  # white corner
    center = image[0, 32, 32]
    assert center[0] > 0.9 and center[1] < 0.1  # red object in the middle
    assert float(alpha[0, 32, 32]) > 0.99 and float(alpha[0, 0, 0]) < 0.01


def test_only_the_adapter_imports_comfyui():
    pattern = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|comfy_extras|folder_paths|server|execution|"
                         r"latent_preview|nodes)\b", re.M)
    for path in (REPO_ROOT / "nodes").glob("*.py"):
        if path.name == "comfy_api.py":  # the one ComfyUI import point
            continue
        assert not pattern.search(path.read_text()), f"{path.name} imports ComfyUI directly"
    for path in (REPO_ROOT / "lgm_core").rglob("*.py"):
        assert not pattern.search(path.read_text()), f"{path} imports ComfyUI"
    init = (REPO_ROOT / "__init__.py").read_text()
    assert "comfy_entrypoint" in init and "NODE_CLASS_MAPPINGS =" not in init


def test_pack_loads_its_own_lgm_core_without_touching_sys_path(tmp_path):
    """Importing the pack (as ComfyUI does: its folder as a package) makes ``lgm_core`` the pack's own
    copy even when another ``lgm_core`` comes first on sys.path or was imported already, and leaves
    sys.path as it was."""
    import subprocess
    import sys

    decoy = tmp_path / "elsewhere" / "lgm_core"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")
    (tmp_path / "custom_nodes").mkdir()
    (tmp_path / "custom_nodes" / "comfyui-lgm").symlink_to(REPO_ROOT)
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(decoy.parent)!r})\n"
        "import lgm_core; assert getattr(lgm_core, 'DECOY', False)\n"  # another copy imported first
        "before = list(sys.path)\n"
        f"spec = importlib.util.spec_from_file_location('comfyui-lgm', {str(tmp_path / 'custom_nodes' / 'comfyui-lgm' / '__init__.py')!r})\n"
        "pack = importlib.util.module_from_spec(spec); sys.modules['comfyui-lgm'] = pack; spec.loader.exec_module(pack)\n"
        "import lgm_core, lgm_core.gaussians\n"
        "assert sys.path == before, 'sys.path changed'\n"
        "print(lgm_core.__file__, lgm_core.gaussians.__file__)\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    init, gaussians = out.stdout.split()
    assert Path(init).resolve() == (REPO_ROOT / "lgm_core" / "__init__.py").resolve()
    assert Path(gaussians).resolve() == (REPO_ROOT / "lgm_core" / "gaussians.py").resolve()
    assert "replacing the lgm_core imported from" in out.stderr

def test_splat_to_mesh_calibrated_level(harness):
    """calibrate_level on: the node meshes at the iso-level calibrated on the splat's renders, at most
    'level' (the library's level="auto", max_level=level); off, and in graphs saved before the input
    existed: 'level' itself."""
    import trimesh

    from lgm_core.mesh import extract_mesh
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import load_ply, save_ply

    save_ply(make_scene("box", n=3000, seed=2), harness.input_dir / "box_for_level.ply")
    g = load_ply(harness.input_dir / "box_for_level.ply")
    mesh_args = {"resolution": 32, "target_faces": 2000, "texture": False, "texture_size": 128, "level": 1.0}
    graph = {"1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": "box_for_level.ply"}}}
    for i, calibrate in enumerate((None, False, True)):
        inputs = dict(mesh_args, splat=["1", 0]) | ({} if calibrate is None else {"calibrate_level": calibrate})
        graph[f"m{i}"] = {"class_type": "LGMSplatToMesh", "inputs": inputs}
        graph[f"s{i}"] = {"class_type": "SaveGLB", "inputs": {"mesh": [f"m{i}", 0], "filename_prefix": f"level/{i}"}}
    result = harness.run(graph)
    faces = [len(trimesh.load(harness.output_path(result.files(f"s{i}", "3d")[0]), force="mesh").faces)
             for i in range(3)]
    fixed = extract_mesh(g, resolution=32, target_faces=2000, texture=False, level=1.0, device="cpu")
    calibrated = extract_mesh(g, resolution=32, target_faces=2000, texture=False, level="auto", max_level=1.0,
                              device="cpu")
    assert len(fixed.faces) != len(calibrated.faces), "the scene does not tell the two levels apart"
    assert faces == [len(fixed.faces), len(fixed.faces), len(calibrated.faces)]


def test_save_splat_formats_and_core_save_glb(harness):
    """.splat files round-trip; our MESH goes into core's SaveGLB unchanged."""
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply
    from lgm_core.splat_formats import load_splat

    g = make_scene("box", n=3000, seed=2)
    save_ply(g, harness.input_dir / "box_for_test.ply")
    graph = {
        "1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": "box_for_test.ply"}},
        "2": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["1", 0], "filename_prefix": "fmt/box",
                                                       "min_opacity": 0.0, "format": "ply+splat"}},
        "3": {"class_type": "LGMSplatToMesh", "inputs": {"splat": ["1", 0], "resolution": 32, "target_faces": 2000,
                                                         "texture": False, "texture_size": 128, "level": 1.0}},
        "4": {"class_type": "SaveGLB", "inputs": {"mesh": ["3", 0], "filename_prefix": "fmt/core"}},
    }
    result = harness.run(graph)
    files = {r["filename"].rsplit(".", 1)[1]: harness.output_path(r) for r in result.files("2")}
    assert set(files) == {"ply", "splat"}
    back = load_splat(files["splat"])
    assert back.num_gaussians == 3000
    assert torch.allclose(back.positions[0].mean(0), g.positions[0].mean(0), atol=1e-5)
    assert torch.allclose(back.opacities.mean(), g.opacities.mean(), atol=1e-2)
    (glb,) = result.files("4", "3d")
    import trimesh

    mesh = trimesh.load(harness.output_path(glb), force="mesh")
    assert len(mesh.faces) > 10
