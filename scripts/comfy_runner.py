"""Run a test ComfyUI (``.comfyui/<core>/`` from ``scripts/setup_comfyui.sh``) as a server on 127.0.0.1
and drive its real frontend in headless Chromium; write the example inputs the shipped workflows name.

Used by ``scripts/build_workflows.py`` and by the tests (``tests/comfy_harness.py`` re-exports these);
imports neither pytest nor anything from ``tests/``. ``paths`` arguments are any object with the
attributes ``comfyui`` (the ComfyUI folder), ``venv_python`` and ``custom_nodes`` (the folder whose
``comfyui-lgm`` entry is this pack).
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFY_ROOT = Path(os.environ.get("LGM_COMFYUI_DIR", REPO_ROOT / ".comfyui")).resolve()


@dataclass
class ComfyPaths:
    core: str           # "0.3.75", "0.33.0"
    root: Path          # .comfyui/<core>/
    comfyui: Path       # .comfyui/<core>/ComfyUI (main.py, nodes.py, ...)
    venv_python: Path   # .comfyui/<core>/venv/bin/python
    site_packages: Path  # the venv's site-packages
    custom_nodes: Path  # parent folder holding the `comfyui-lgm` link to this repository


def installed_core(core: str, comfy_root: Path = COMFY_ROOT) -> ComfyPaths | None:
    """Paths of the installed test ComfyUI ``core`` under ``comfy_root``, or None when it is absent or
    incomplete (no main.py, venv or ``.ready`` marker)."""
    root = Path(comfy_root) / core
    comfyui = root / "ComfyUI"
    py = root / "venv" / "bin" / "python"
    if not (comfyui / "main.py").is_file() or not py.exists() or not (root / ".ready").is_file():
        return None
    libs = sorted((root / "venv" / "lib").glob("python3*/site-packages"))
    if not libs:
        return None
    return ComfyPaths(core, root, comfyui, py, libs[0], Path(comfy_root) / "custom_nodes")


def write_example_inputs(input_dir: Path) -> dict[str, Path]:
    """The input files the shipped workflows reference: an RGBA object photo, 4 views, a 3DGS .ply."""
    import numpy as np
    from PIL import Image

    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    size = 96
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - 50) ** 2 + (yy - 44) ** 2) < 28 ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = (xx * 2).clip(0, 255)
    rgba[..., 2] = 60
    rgba[..., 3] = disc * 255
    out["object"] = input_dir / "lgm_example_object.png"
    Image.fromarray(rgba, "RGBA").save(out["object"])
    for k in range(4):
        view = np.full((64, 64, 3), 255, np.uint8)
        view[16:48, 12 + 4 * k:44 + 4 * k] = (60 * k, 120, 200 - 40 * k)
        out[f"view_{k}"] = input_dir / f"lgm_view_{k}.png"
        Image.fromarray(view).save(out[f"view_{k}"])
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    out["ply"] = input_dir / "lgm_example.ply"
    save_ply(make_scene("sphere", n=4096, seed=0), out["ply"])
    return out



class ComfyServer:
    """``main.py`` of the test ComfyUI on 127.0.0.1, this pack loaded through custom_nodes, models
    from ``models_dir`` (mapped with --extra-model-paths-config). Use as a context manager.

    ``api_nodes``: False (default) starts it with ``--disable-api-nodes``; note that this flag also
    makes 0.33's server send a content-security policy without ``blob:`` in ``connect-src``, which
    blocks three.js from loading a GLB's embedded textures (tests of the 3D viewer pass True)."""

    def __init__(self, paths: ComfyPaths, work_dir: Path, models_dir: Path, extra_args: tuple = (),
                 api_nodes: bool = False):
        self.paths = paths
        self.api_nodes = api_nodes
        self.work_dir = Path(work_dir)
        self.models_dir = Path(models_dir)
        self.extra_args = tuple(extra_args)
        self.proc = None
        self.port = None
        self.log_path = self.work_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        import socket
        import subprocess
        import time
        import urllib.request

        for sub in ("input", "output", "temp", "user"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        yaml = self.work_dir / "extra_model_paths.yaml"
        yaml.write_text(
            "lgm_tests:\n"
            f"  custom_nodes: {self.paths.custom_nodes}\n"
            f"  lgm: {self.models_dir / 'lgm'}\n"
            f"  diffusers: {self.models_dir / 'diffusers'}\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [str(self.paths.venv_python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               *(() if self.api_nodes else ("--disable-api-nodes",)), "--database-url", "sqlite:///:memory:",
               "--input-directory", str(self.work_dir / "input"),
               "--output-directory", str(self.work_dir / "output"),
               "--user-directory", str(self.work_dir / "user"),
               "--temp-directory", str(self.work_dir / "temp"),
               "--extra-model-paths-config", str(yaml), *self.extra_args]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=str(self.paths.comfyui), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import json
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw, status = e.read(), e.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def browser_tools() -> tuple[Path, Path] | None:
    """(playwright-core package dir, chromium binary) when both are installed, else None."""
    import shutil

    pw = COMFY_ROOT / "node" / "node_modules" / "playwright-core"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not (pw / "package.json").is_file() or chromium is None or shutil.which("node") is None:
        return None
    return pw, Path(chromium)


def run_frontend(server: ComfyServer, items: list[dict], timeout: float = 300.0) -> dict:
    """Run ``scripts/comfy_frontend.mjs`` against ``server`` for ``items`` (see that script)."""
    import json
    import subprocess
    import tempfile

    tools = browser_tools()
    if tools is None:
        raise RuntimeError("playwright-core/chromium/node not installed")
    server.request("POST", "/settings/Comfy.TutorialCompleted", True)
    # screenshots readable when the whole graph is in view: full detail at any zoom, no minimap
    server.request("POST", "/settings/LiteGraph.Canvas.MinFontSizeForLOD", 0)
    server.request("POST", "/settings/LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.1)
    server.request("POST", "/settings/Comfy.Minimap.Visible", False)
    with tempfile.TemporaryDirectory() as tmp:
        job = {"url": server.url, "playwright": str(tools[0]), "chromium": str(tools[1]),
               "out": os.path.join(tmp, "out.json"), "items": items}
        job_path = os.path.join(tmp, "job.json")
        with open(job_path, "w") as f:
            json.dump(job, f)
        proc = subprocess.run(["node", str(REPO_ROOT / "scripts" / "comfy_frontend.mjs"), job_path],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"frontend driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        with open(job["out"]) as f:
            return json.load(f)


def strip_meta(prompt: dict) -> dict:
    """An API prompt without the frontend's per-node ``_meta`` (titles) for comparisons."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in prompt.items()}
