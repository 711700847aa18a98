"""The per-core runner of the ComfyUI tests (tests/comfy_cores.py) without any ComfyUI installed: every
ComfyUI test appears once per core and is reported as skipped with the reason; bad core names stop."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT


def _pytest(tmp_path, *args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("LGM_COMFY_CORES", "LGM_SKIP_COMFYUI_SETUP")}
    environ.update(LGM_COMFYUI_DIR=str(tmp_path / "no-comfyui"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO_ROOT,
                          env=environ, capture_output=True, text=True, timeout=300)


def test_each_comfyui_test_runs_per_core_and_skips_with_the_reason(tmp_path):
    proc = _pytest(tmp_path, "tests/test_comfyui_nodes.py", "-q", "-rs", "-k", "registered or adapter")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert "4 skipped" in out, out[-3000:]
    for core in ("0.3.75", "0.33.0"):
        assert f"no ComfyUI {core} test environment in {tmp_path / 'no-comfyui' / core}" in out
    listed = _pytest(tmp_path, "tests/test_workflows.py", "--collect-only", "-q").stdout
    assert "test_workflow_runs[0.3.75-lgm_text_to_3d]" in listed and "test_workflow_runs[0.33.0-lgm_text_to_3d]" in listed


def test_one_core_can_be_chosen_and_unknown_ones_stop(tmp_path):
    listed = _pytest(tmp_path, "tests/test_workflows.py", "--collect-only", "-q", LGM_COMFY_CORES="0.33.0").stdout
    assert "[0.33.0-" in listed and "[0.3.75-" not in listed
    bad = _pytest(tmp_path, "tests/test_workflows.py", "--collect-only", "-q", LGM_COMFY_CORES="0.2")
    assert bad.returncode != 0 and "unknown core" in (bad.stdout + bad.stderr)
