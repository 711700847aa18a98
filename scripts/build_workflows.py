"""Regenerate the shipped workflows through the real ComfyUI frontend.

For each graph in ``scripts/workflow_graphs.py``: start the test ComfyUI (``.comfyui/``, from
``scripts/setup_comfyui.sh``) with stand-in models, load the API-format graph in the real frontend in
headless Chromium, let it lay the graph out, and save what it serialises:

* ``workflows/<name>.json``      UI format (what users open or drag in; listed by ComfyUI as templates)
* ``workflows/api/<name>.json``  the frontend's ``graphToPrompt`` output (API format, run by tests)
* ``docs/images/<name>.png``     a canvas screenshot

Usage: python scripts/build_workflows.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "scripts"), str(REPO)]

from comfy_harness import (ComfyServer, comfy_paths, run_frontend, strip_meta,  # noqa: E402
                           write_example_inputs)
from workflow_graphs import WORKFLOWS  # noqa: E402


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    from lgm_core.testing import make_standin_models

    paths = comfy_paths()
    if paths is None:
        print("run scripts/setup_comfyui.sh first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_standin_models(tmp / "models")
        write_example_inputs(tmp / "work" / "input")
        with ComfyServer(paths, tmp / "work", tmp / "models") as server:
            items = [{"name": name, "mode": "build", "api": build(),
                      "screenshot": str(REPO / "docs" / "images" / f"{name}.png")}
                     for name, build in WORKFLOWS.items()]
            (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
            results = run_frontend(server, items)
    for name, build in WORKFLOWS.items():
        res = results[name]
        if res["missing"]:
            raise SystemExit(f"{name}: the frontend does not know {res['missing']}")
        got, want = strip_meta(res["prompt"]), strip_meta(build())
        if got != want:
            diff = {k: (want.get(k), got.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
            raise SystemExit(f"{name}: graphToPrompt differs from the source graph (source, frontend):\n"
                             f"{json.dumps(diff, indent=1)}")
        ui = res["ui"]
        _atomic_write(REPO / "workflows" / f"{name}.json", json.dumps(ui, indent=2) + "\n")
        _atomic_write(REPO / "workflows" / "api" / f"{name}.json", json.dumps(res["prompt"], indent=2) + "\n")
        print(f"wrote workflows/{name}.json, workflows/api/{name}.json, docs/images/{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
