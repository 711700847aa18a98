"""nodes/dependencies.py without ComfyUI: requirements parsing, version checks, the one message with the
pip line, per-node selection and the execute guard. (Inside ComfyUI: tests/test_comfyui_env.py.)"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import tomllib

import pytest

from conftest import REPO_ROOT


def _load():
    # loaded from its file: the name `nodes` belongs to ComfyUI in the ComfyUI test processes
    spec = importlib.util.spec_from_file_location("lgm_pack_dependencies", REPO_ROOT / "nodes" / "dependencies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


deps = _load()


def test_requirements_txt_matches_pyproject():
    """requirements.txt (what a ComfyUI user installs) = pyproject's dependencies minus torch."""
    reqs = {(deps.canonical(r.name), r.spec) for r in deps.read_requirements()}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = set()
    for line in project:
        m = deps._REQ_LINE.match(line)
        if deps.canonical(m.group(1)) != "torch":
            listed.add((deps.canonical(m.group(1)), m.group(2)))
    assert reqs == listed


def test_every_node_names_known_requirements():
    names = {deps.canonical(r.name) for r in deps.read_requirements()}
    for node, needed in deps.NODE_REQUIREMENTS.items():
        assert {deps.canonical(n) for n in deps.BASE + needed} <= names, node


def test_versions_compare_on_release_numbers():
    r = deps.Requirement("diffusers", ">=0.27")
    assert r.accepts("0.27") and r.accepts("0.27.0") and r.accepts("0.42.1") and r.accepts("1.0rc1")
    assert not r.accepts("0.26.3") and not r.accepts("0.9")
    assert deps.Requirement("x", "==1.2").accepts("1.2.0") and not deps.Requirement("x", "==1.2").accepts("1.3")
    assert deps.Requirement("x", "").accepts("0.0.1")


def test_report_names_missing_and_old_packages_and_the_pip_line():
    reqs = deps.read_requirements()
    versions = {"diffusers": "0.20.0", "scikit-image": None}
    report = deps.check(reqs, lambda name: versions.get(name, "99.0") if name in versions else "99.0")
    assert not report.ok and set(report.problems) == {"diffusers", "scikit-image"}
    msg = report.message()
    assert "diffusers 0.20.0 (too old: >=0.27 needed)" in msg and "scikit-image (missing)" in msg
    assert f"{sys.executable} -m pip install -r {deps.REQUIREMENTS_FILE}" in msg
    assert "\n" not in msg
    # per node: the mesh node needs scikit-image, the reconstruction node neither
    assert [p.requirement.name for p in report.problems_for(deps.needed_by("LGMSplatToMesh"))] == ["scikit-image"]
    assert report.problems_for(deps.needed_by("LGMReconstruct")) == []
    assert len(report.problems_for(deps.needed_by("SomeFutureNode"))) == 2  # unknown nodes need everything


def test_installed_versions_are_read_without_importing():
    assert deps._installed_version("numpy") is not None
    assert deps._installed_version("surely-not-a-package-xyz") is None
    assert deps.report().ok, deps.report().message()  # this interpreter has everything


def test_guard_fails_the_node_first_with_the_message(monkeypatch):
    calls = []

    class Node:
        @classmethod
        def execute(cls, splat, resolution=64):
            calls.append(resolution)
            return "ran"

    deps.guard_node(Node, "LGMSplatToMesh")
    assert list(inspect.signature(Node.execute).parameters) == ["splat", "resolution"]
    assert Node.execute(None, resolution=3) == "ran"
    broken = deps.check(deps.read_requirements(), lambda name: None if name == "xatlas" else "99.0")
    monkeypatch.setattr(deps, "report", lambda: broken)
    with pytest.raises(deps.MissingDependencies, match=r"xatlas \(missing\).*pip install -r"):
        Node.execute(None)
    assert calls == [3]  # nothing ran before the check
    deps.guard_node(Node, "LGMSplatToMesh")  # idempotent
    assert not hasattr(Node.execute.__wrapped__, "__wrapped__")
