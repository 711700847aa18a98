"""Every file-name input of every node stays in its folder (input, output, models), in a real
ComfyUI: '../', absolute paths and symlinks are refused at validation and at execution;
'[output]' names work; ply+splat share one counter; a symlink loop cannot hang the model list."""

from __future__ import annotations

import os
import threading
import time

import pytest

from comfy_harness import harness  # noqa: F401  (fixture)

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def secret(harness, tmp_path_factory):
    """A valid splat .ply outside every ComfyUI folder, and symlinks to it inside input/ and output/."""
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    outside = tmp_path_factory.mktemp("outside")
    save_ply(make_scene("sphere", n=500, seed=0), outside / "secret.ply")
    made = []
    for folder in (harness.input_dir, harness.output_dir):
        for name, target in (("evil_link.ply", outside / "secret.ply"), ("evil_dir", outside)):
            link = folder / name
            if not os.path.lexists(link):
                os.symlink(target, link)
                made.append(link)
    save_ply(make_scene("box", n=500, seed=1), harness.input_dir / "inside.ply")
    save_ply(make_scene("box", n=600, seed=2), harness.output_dir / "made.ply")
    made += [harness.input_dir / "inside.ply", harness.output_dir / "made.ply"]
    yield outside
    for p in made:  # the harness is shared by the session: leave its folders as they were
        p.unlink(missing_ok=True)


def _load_graph(name):
    return {"1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": name}},
            "2": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["1", 0], "filename_prefix": "copied/x",
                                                           "min_opacity": 0.0}}}


HOSTILE_NAMES = ["../../../x/secret.ply", "../outside/secret.ply", "evil_link.ply", "evil_dir/secret.ply",
                 "sub/../../secret.ply"]


@pytest.mark.parametrize("name", HOSTILE_NAMES + ["ABSOLUTE"])
def test_load_splat_refuses_names_outside_input(harness, secret, name):
    if name == "ABSOLUTE":
        name = str(secret / "secret.ply")
    ok, _err, _outs, node_errors = harness.validate(_load_graph(name))
    assert not ok and "1" in node_errors, node_errors
    text = str(node_errors["1"])
    assert "outside" in text or "absolute" in text, text
    node = harness.node_classes["LGMLoadSplat"]
    with pytest.raises(ValueError):
        node.execute(name)  # even when validation is bypassed
    # fingerprinting never touches the outside path (no stat of arbitrary files)
    assert node.fingerprint_inputs(name) == name
    copied = harness.output_dir / "copied"
    assert not copied.exists() or not list(copied.iterdir())


def test_load_splat_accepts_inside_and_annotated_names(harness, secret):
    node = harness.node_classes["LGMLoadSplat"]
    assert node.validate_inputs("inside.ply") is True
    assert node.validate_inputs("made.ply [output]") is True  # ComfyUI's annotation for output files
    assert "not found" in node.validate_inputs("nope.ply")
    assert "not a splat file" in node.validate_inputs("inside.png")
    result = harness.run(_load_graph("made.ply [output]"))
    (record,) = result.files("2")
    from lgm_core.ply import load_ply

    assert load_ply(harness.output_path(record)).num_gaussians == 600
    assert node.validate_inputs("evil_link.ply [output]") is not True  # the output folder is contained too
    names = node.GET_SCHEMA().inputs[0].options
    assert "inside.ply" in names and "evil_link.ply" not in names and not any("secret" in n for n in names)


@pytest.mark.parametrize("prefix", ["../escaped/x", "/tmp/escaped/x", "evil_dir/x", "a/../../x", "nul\x00/x"])
def test_save_nodes_refuse_prefixes_outside_output(harness, secret, prefix):
    from lgm_core.mesh.synthetic import make_scene

    g = make_scene("sphere", n=300, seed=3)
    save = harness.node_classes["LGMSaveSplat"]
    before = sorted(os.listdir(secret))
    with pytest.raises(ValueError, match="output folder|outside|relative"):
        save.execute(g, prefix, 0.0)
    import torch

    core_mesh = type("M", (), {"vertices": torch.rand(1, 4, 3), "faces": torch.tensor([[[0, 1, 2], [0, 2, 3]]])})()
    with pytest.raises(ValueError, match="output folder|outside|relative"):
        harness.node_classes["LGMSaveMesh"].execute(core_mesh, prefix, "ply")
    assert sorted(os.listdir(secret)) == before  # nothing written outside


def test_ply_and_splat_of_one_item_share_a_counter(harness):
    from lgm_core.mesh.synthetic import make_scene

    g = make_scene("sphere", n=300, seed=4)
    save = harness.node_classes["LGMSaveSplat"]
    for _ in range(2):
        out = save.execute(g, "counter/pair", 0.0, "ply+splat")
    records = out.ui["splats"] if hasattr(out, "ui") and isinstance(out.ui, dict) else out.ui.as_dict()["splats"]
    stems = {r["filename"].rsplit(".", 1)[0] for r in records}
    assert len(records) == 2 and len(stems) == 1, records
    assert stems == {"pair_00002_"}


def test_model_loaders_refuse_names_outside_models(harness, secret, tmp_path):
    import folder_paths

    lgm = harness.node_classes["LGMModelLoader"]
    outside_ckpt = secret / "model_fp16_fixrot.safetensors"
    outside_ckpt.write_bytes(b"\0" * 16)
    lgm_root = folder_paths.get_folder_paths("lgm")[0]
    link = os.path.join(lgm_root, "linked_out.safetensors")
    if not os.path.lexists(link):
        os.symlink(outside_ckpt, link)
    try:
        for name in ["../../outside/model_fp16_fixrot.safetensors", str(outside_ckpt), "linked_out.safetensors"]:
            assert lgm.validate_inputs(name, "auto") is not True
            with pytest.raises(ValueError, match="outside|absolute"):
                lgm.execute(name, "auto", False)
        assert "linked_out.safetensors" not in lgm.GET_SCHEMA().inputs[0].options
    finally:
        os.unlink(link)
    mv = harness.node_classes["LGMMultiViewLoader"]
    for name in ["../lgm", "../../..", "/etc"]:
        assert mv.validate_inputs(name, "auto") is not True
        with pytest.raises(ValueError, match="outside|absolute"):
            mv.execute(name, "auto", False)


def _comfy_api():
    import sys

    for name, mod in sys.modules.items():
        if name.endswith("nodes.files") and hasattr(mod, "diffusers_model_names"):
            return mod
    raise RuntimeError("the pack's nodes.files module is not loaded")


def test_symlink_loop_in_model_folders_does_not_hang(harness):
    import folder_paths

    api = _comfy_api()
    root = folder_paths.get_folder_paths("diffusers")[0]
    loop = os.path.join(root, "loop")
    if not os.path.lexists(loop):
        os.symlink(root, loop)
    lgm_root = folder_paths.get_folder_paths("lgm")[0]
    lgm_loop = os.path.join(lgm_root, "again")
    if not os.path.lexists(lgm_loop):
        os.symlink(lgm_root, lgm_loop)
    result = {}

    def listing():
        result["mv"] = api.diffusers_model_names()
        result["lgm"] = api.lgm_checkpoint_names()

    t = threading.Thread(target=listing, daemon=True)
    t0 = time.time()
    t.start()
    t.join(20)
    if not t.is_alive():
        os.unlink(loop)
        os.unlink(lgm_loop)
    assert not t.is_alive(), "the model list hangs on a symlink loop"
    assert time.time() - t0 < 20
    assert {"mvdream-sd2.1-diffusers", "imagedream-ipmv-diffusers"} <= set(result["mv"])
    assert "model_fp16_fixrot.safetensors" in result["lgm"]
