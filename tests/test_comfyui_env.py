"""CI guard for the ComfyUI test environments (once per core): each is what a user's ComfyUI is after
the README's install step, nothing leaks in from the interpreter that runs pytest, every requirement
of the pack imports in it, torch is the one local torch (linked, not a second copy); and the pack
reports missing/too-old packages once at start-up and from every node that needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from comfy_harness import REPO_ROOT, harness, require_comfy  # noqa: F401  (fixture)

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("comfy_core")]

_PROBE = r"""
import importlib, importlib.metadata as md, json, os, sys
sys.path.insert(0, sys.argv[1])  # the pack's dependency checker, loaded from its file
import importlib.util
spec = importlib.util.spec_from_file_location("lgm_deps_probe", os.path.join(sys.argv[1], "nodes", "dependencies.py"))
deps = importlib.util.module_from_spec(spec); sys.modules[spec.name] = deps; spec.loader.exec_module(deps)
sys.path.pop(0)
failed = {}
for req in deps.read_requirements():
    for module in deps._top_level_modules(md.distribution(req.name)) or [req.name]:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[req.name] = f"{type(exc).__name__}: {exc}"
for module in ("torch", "torchvision", "torchaudio", "aiohttp", "av"):
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed[module] = f"{type(exc).__name__}: {exc}"
import torch
dists = {}
for d in md.distributions():
    dists.setdefault(deps.canonical(d.metadata["Name"]), []).append(str(d._path))
print("PROBE" + json.dumps({
    "problems": {k: p.describe() for k, p in deps.report().problems.items()},
    "failed": failed, "sys_path": sys.path, "prefix": sys.prefix,
    "torch_file": torch.__file__, "torch_version": torch.__version__, "dists": dists}))
"""


@pytest.fixture(scope="module")
def probe(comfy_core):
    paths = require_comfy(comfy_core)
    proc = subprocess.run([str(paths.venv_python), "-I", "-c", _PROBE, str(REPO_ROOT)], capture_output=True,
                          text=True, timeout=300, cwd=str(paths.root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return paths, json.loads(proc.stdout.split("PROBE", 1)[1])


def test_every_requirement_imports_in_the_comfyui_env(probe):
    _paths, info = probe
    assert info["problems"] == {}, info["problems"]
    assert info["failed"] == {}, info["failed"]


def test_the_env_is_isolated_and_has_no_test_tools(probe):
    import sysconfig

    paths, info = probe
    # the site-packages of the interpreter that holds torch (the one running the outer pytest) and of the
    # base Python: neither may be visible in the ComfyUI venv
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]
    outer = {os.path.realpath(paths.site_packages / "torch").rsplit(os.sep, 1)[0], os.path.realpath(base)}
    leaked = [p for p in info["sys_path"] if os.path.realpath(p) in outer]
    assert not leaked, f"the ComfyUI venv sees another interpreter's packages: {leaked}"
    assert os.path.realpath(info["prefix"]) == os.path.realpath(paths.root / "venv")
    assert "pytest" not in info["dists"]  # test tools stay outside the user's environment


def test_one_torch_the_local_one(probe):
    import torch

    paths, info = probe
    assert info["torch_version"] == torch.__version__
    assert os.path.realpath(info["torch_file"]) == os.path.realpath(torch.__file__)  # the same files
    assert (paths.site_packages / "torch").is_symlink()
    assert len(info["dists"]["torch"]) == 1, info["dists"]["torch"]
    record = [p for p in info["dists"]["torch"]][0]
    assert not os.path.exists(os.path.join(record, "RECORD"))  # pip can never uninstall it through the link


def test_quick_test_for_ci_loads_the_pack_and_reports_old_packages_once(tmp_path, comfy_core):
    """``main.py --quick-test-for-ci`` loads the pack; with a too-old package (a stand-in dist-info for
    diffusers 0.1 first on the path) ComfyUI's log says so once, with the pip line, and the pack still
    loads (its workflows open; the nodes needing diffusers fail with that message)."""
    paths = require_comfy(comfy_core)
    fake = tmp_path / "old" / "diffusers-0.1.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: diffusers\nVersion: 0.1\n")
    (fake / "top_level.txt").write_text("diffusers\n")
    yaml = tmp_path / "paths.yaml"
    yaml.write_text(f"lgm_tests:\n  custom_nodes: {paths.custom_nodes}\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "old"))
    proc = subprocess.run(
        [str(paths.venv_python), "main.py", "--cpu", "--quick-test-for-ci", "--database-url", "sqlite:///:memory:",
         "--extra-model-paths-config", str(yaml)],
        cwd=str(paths.comfyui), capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = [line for line in log.splitlines() if "ComfyUI-LGM needs Python packages" in line]
    assert len(lines) == 1, log[-4000:]
    assert "diffusers 0.1 (too old: >=0.27 needed)" in lines[0]
    assert f"-m pip install -r {paths.custom_nodes / 'comfyui-lgm' / 'requirements.txt'}" in lines[0]
    assert "transformers" not in lines[0]  # only what is really wrong
    assert "IMPORT FAILED" not in log and "comfyui-lgm" in log


def test_nodes_needing_a_missing_package_fail_with_the_message(harness, monkeypatch):
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    node = harness.node_classes["LGMSplatToMesh"]
    deps = node.execute.__func__.__globals__  # the guard's module, as ComfyUI loaded it
    assert "guard_node" in deps
    broken = deps["check"](deps["read_requirements"](), lambda name: None if name == "scikit-image" else "99.0")
    monkeypatch.setitem(deps, "report", lambda: broken)
    save_ply(make_scene("sphere", n=512, seed=0), harness.input_dir / "deps_sphere.ply")
    graph = {
        "1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": "deps_sphere.ply"}},
        "2": {"class_type": "LGMSplatToMesh", "inputs": {"splat": ["1", 0], "resolution": 32, "target_faces": 1000,
                                                         "texture": False, "texture_size": 128, "level": 0.7}},
        "3": {"class_type": "LGMSaveMesh", "inputs": {"mesh": ["2", 0], "filename_prefix": "deps/x", "format": "glb"}},
    }
    result = harness.run(graph, check=False)
    assert not result.success and result.error["node_id"] == "2"  # LGMLoadSplat (numpy only) ran
    msg = result.error["exception_message"]
    assert "scikit-image (missing)" in msg and "pip install -r" in msg and "requirements.txt" in msg
    assert result.error["exception_type"].endswith("MissingDependencies")
