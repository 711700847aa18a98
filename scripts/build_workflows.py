"""Regenerate the shipped workflows through the real ComfyUI frontend.

For each graph in ``scripts/workflow_graphs.py``: start the test ComfyUI of the oldest core the graph
runs on (``workflow_graphs.CORES``; ``.comfyui/<core>/`` from ``scripts/setup_comfyui.sh``) with stand-in
models, load the API-format graph in the real frontend in headless Chromium, let it lay the graph out,
and save what it serialises:

* ``workflows/<name>.json``      UI format (what users open or drag in; listed by ComfyUI as templates)
* ``workflows/api/<name>.json``  the frontend's ``graphToPrompt`` output (API format, run by tests)
* ``docs/images/<name>.png``     a canvas screenshot (in the newest core's frontend, 0.33.0)

Usage: python scripts/build_workflows.py [NAME ...]   (default: every graph)
Imports nothing from ``tests/``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO / "scripts"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from comfy_runner import ComfyServer, installed_core, run_frontend, strip_meta, write_example_inputs  # noqa: E402
from workflow_graphs import ALL_CORES, CORES, WORKFLOWS  # noqa: E402

SCREENSHOT_CORE = ALL_CORES[-1]


def _atomic_write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    os.replace(tmp, path)


def _frontend(core: str, items: list[dict], tmp: Path) -> dict:
    paths = installed_core(core)
    if paths is None:
        raise SystemExit(f"no ComfyUI {core} test installation: run scripts/setup_comfyui.sh first")
    work = tmp / f"work-{core}"
    write_example_inputs(work / "input")
    with ComfyServer(paths, work, tmp / "models") as server:
        return run_frontend(server, items)


def main(names: list[str]) -> int:
    from lgm_core.testing import make_standin_models

    names = names or list(WORKFLOWS)
    unknown = [n for n in names if n not in WORKFLOWS]
    if unknown:
        raise SystemExit(f"unknown workflow(s) {unknown}; known: {list(WORKFLOWS)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_standin_models(tmp / "models")
        built = {}
        for core in ALL_CORES:  # each graph is built by the oldest core it runs on
            items = [{"name": n, "mode": "build", "api": WORKFLOWS[n]()} for n in names if CORES[n][0] == core]
            if items:
                built.update(_frontend(core, items, tmp))
        for name in names:
            res = built[name]
            if res["missing"]:
                raise SystemExit(f"{name}: the frontend does not know {res['missing']}")
            got, want = strip_meta(res["prompt"]), strip_meta(WORKFLOWS[name]())
            if got != want:
                diff = {k: (want.get(k), got.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
                raise SystemExit(f"{name}: graphToPrompt differs from the source graph (source, frontend):\n"
                                 f"{json.dumps(diff, indent=1)}")
            _atomic_write(REPO / "workflows" / f"{name}.json", json.dumps(res["ui"], indent=2) + "\n")
            _atomic_write(REPO / "workflows" / "api" / f"{name}.json", json.dumps(res["prompt"], indent=2) + "\n")
        # screenshots of the saved UI files, as a user of the current ComfyUI sees them
        shots = tmp / "shots"
        shots.mkdir()
        items = [{"name": n, "mode": "check", "ui": built[n]["ui"], "screenshot": str(shots / f"{n}.png")}
                 for n in names]
        _frontend(SCREENSHOT_CORE, items, tmp)
        for name in names:
            _atomic_write(REPO / "docs" / "images" / f"{name}.png", (shots / f"{name}.png").read_bytes())
            print(f"wrote workflows/{name}.json, workflows/api/{name}.json, docs/images/{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
