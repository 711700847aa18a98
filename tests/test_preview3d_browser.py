"""The pack's textured GLB in core's Preview 3D, in the real 0.33.0 frontend (headless Chromium), with the
server started as a user starts it: WITHOUT ``--disable-api-nodes`` (API nodes load; the machine is offline
and every non-localhost request of the page is refused and listed).

Why not with the flag: ``--disable-api-nodes`` also makes 0.33's server send a content-security policy
whose ``connect-src`` lacks ``blob:``; three.js's GLTFLoader fetches a GLB's embedded images from
``blob:`` URLs, so the texture is refused and the model shows white. A test run with that flag would hide a
real viewer problem (or show one that users do not have), so this test runs without it and checks the
texture's colours on the viewer's own WebGL canvas.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfy_harness import ComfyServer, require_browser

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.usefixtures("comfy_core")]

MAGENTA = (1.0, 0.0, 1.0)
GREEN = (0.0, 0.8, 0.0)


def textured_cube():
    """A cube (24 vertices, a full-texture quad per face) whose texture is magenta on the left half and
    green on the right: every view shows both colours; an untextured (white) material shows neither."""
    from lgm_core.mesh.types import Mesh

    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    vertices, uvs, faces = [], [], []
    for quad in quads:
        base = len(vertices)
        vertices += [corners[i] for i in quad]
        uvs += [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
    texture = torch.zeros(64, 64, 3)
    texture[:, :32] = torch.tensor(MAGENTA)
    texture[:, 32:] = torch.tensor(GREEN)
    return Mesh(vertices=torch.stack(vertices), faces=torch.tensor(faces), uvs=torch.tensor(uvs),
                texture=texture).compute_normals()


def colour_fractions(png_path) -> dict[str, float]:
    """Fractions of the image's pixels that are clearly magenta, clearly green, or near-white/grey."""
    from PIL import Image

    img = np.asarray(Image.open(png_path).convert("RGB"), dtype=np.float32) / 255.0
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    magenta = (r > 0.35) & (b > 0.35) & (g < 0.5 * np.minimum(r, b))
    green = (g > 0.3) & (r < 0.5 * g) & (b < 0.5 * g)
    grey = (np.abs(r - g) < 0.04) & (np.abs(g - b) < 0.04) & (r > 0.55)
    n = img.shape[0] * img.shape[1]
    return {"magenta": float(magenta.sum()) / n, "green": float(green.sum()) / n, "grey": float(grey.sum()) / n}


def test_textured_glb_shows_its_texture_in_preview3d(tmp_path, comfy_core):
    paths = require_browser(comfy_core)
    if comfy_core == "0.3.75":
        pytest.skip("the current core's viewer is the one under test (0.3.75's frontend predates its CSP)")
    from lgm_core.mesh.files import glb_bytes
    from comfy_harness import run_frontend

    (tmp_path / "models" / "lgm").mkdir(parents=True)
    (tmp_path / "models" / "diffusers").mkdir(parents=True)
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    (work / "output" / "lgm_cube.glb").write_bytes(glb_bytes(textured_cube()))
    shots = tmp_path / "shots"
    shots.mkdir()
    prompt = {"1": {"class_type": "Preview3D", "inputs": {"model_file": "lgm_cube.glb", "image": ""}}}
    with ComfyServer(paths, work, tmp_path / "models", api_nodes=True) as server:
        status, _ = server.request("GET", "/object_info/Preview3D")
        assert status == 200
        results = run_frontend(server, [{"name": "preview3d", "mode": "run", "api": prompt,
                                         "canvas_shots": str(shots), "settle_ms": 6000}])
        log = server.log_tail(20000)
    res = results["preview3d"]
    assert res["ended"] == "execution_success", (res["ended"], res["console"], log[-3000:])
    assert "content-security" not in " ".join(res["console"]).lower(), res["console"]
    assert res["canvases"], f"no viewer canvas was drawn; console: {res['console']}"
    fractions = [colour_fractions(c["path"]) for c in res["canvases"]]
    best = max(fractions, key=lambda f: min(f["magenta"], f["green"]))
    # both texture colours really on screen (a white/untextured cube shows neither, only greys)
    assert best["magenta"] > 0.01 and best["green"] > 0.01, (fractions, res["console"])
