"""Each shipped UI-format workflow loads in the real ComfyUI frontend (headless Chromium, frontend
1.32.9 served by the test ComfyUI) and converts, through the frontend's own ``graphToPrompt``, to
exactly its API twin in ``workflows/api/`` (each workflow on the cores it is made for). Saves a canvas screenshot per workflow (to ``docs/images/<name>.png`` with LGM_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import os

import pytest

from comfy_harness import (API_DIR, REPO_ROOT, WORKFLOW_DIR, ComfyServer, require_browser,
                           run_frontend, strip_meta, workflow_names, write_example_inputs)
from workflow_graphs import CORES  # scripts/: each graph's cores; the first one's frontend wrote it

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.usefixtures("comfy_core")]


def test_ui_workflows_convert_to_their_api_twins(tmp_path, comfy_core):
    paths = require_browser(comfy_core)
    from lgm_core.testing import make_standin_models

    make_standin_models(tmp_path / "models")
    write_example_inputs(tmp_path / "work" / "input")
    names = [n for n in workflow_names() if comfy_core in CORES[n]]
    # screenshots go to docs/images only when asked (LGM_UPDATE_SCREENSHOTS=1), so a test run leaves the tree clean
    update = os.environ.get("LGM_UPDATE_SCREENSHOTS") == "1"
    shots = REPO_ROOT / "docs" / "images" if update else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    items = [{"name": n, "mode": "check", "ui": json.loads((WORKFLOW_DIR / f"{n}.json").read_text()),
              "screenshot": str(shots / f"{n}.png")} for n in names]
    with ComfyServer(paths, tmp_path / "work", tmp_path / "models") as server:
        results = run_frontend(server, items)
    for name in names:
        res = results[name]
        assert not res["missing"], f"{name}: unknown node types in the frontend: {res['missing']}"
        twin = json.loads((API_DIR / f"{name}.json").read_text())
        got = res["prompt"]
        if comfy_core != CORES[name][0]:
            # _meta.title is the display name of each core node, which newer cores renamed ("Preview 3D" ->
            # "Preview 3D & Animation"); it is display-only, so compare everything else exactly
            got, twin = strip_meta(got), strip_meta(twin)
        assert got == twin, f"{name}: graphToPrompt ({comfy_core}) differs from workflows/api/{name}.json"
        png = shots / f"{name}.png"
        assert png.stat().st_size > 10_000
