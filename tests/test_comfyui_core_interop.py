"""The pack's SPLAT and MESH in ComfyUI core's own 3D nodes (cores that have them: 0.33.0).

Frame contract (docs/comfyui.md): SPLAT crosses in core's 3DGS frame, so the same camera shows the
same picture in LGM Render Splat and in core's RenderSplat; core's MESH conventions (UV origin top-left,
linear vertex colours) hold at the boundary.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_harness import REPO_ROOT, harness  # noqa: F401  (fixture)

MARKERS = {"red": ((0.0, 0.5, 0.0), (1.0, 0.1, 0.1)),    # top (+y)
           "green": ((0.5, 0.0, 0.0), (0.1, 1.0, 0.1)),  # right (+x)
           "blue": ((0.0, 0.0, 0.5), (0.1, 0.1, 1.0))}   # front (+z)


def pack_module(name: str):
    """The pack's module ``nodes/<name>.py`` as ComfyUI loaded it."""
    want = (REPO_ROOT / "nodes" / f"{name}.py").resolve()
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and Path(path).resolve() == want:
            return mod
    raise RuntimeError(f"the pack's nodes/{name}.py is not loaded")


def require_core_node(harness, name: str):
    if name not in harness.node_classes:
        pytest.skip(f"ComfyUI {harness.paths.core} has no core node {name}")
    return harness.node_classes[name]


def marker_scene(seed: int = 0):
    """An asymmetric object in the LGM frame: a grey box of flat, oriented surfels (wrong rotations
    change its look) and three coloured balls on +y, +x and +z (small Gaussians, as LGM's are)."""
    from lgm_core.gaussians import SH_C0, Gaussians
    from lgm_core.mesh.synthetic import make_scene

    body = make_scene("box", n=6000, seed=seed)
    body = Gaussians(positions=body.positions * 0.45, scales=body.scales * 0.6, rotations=body.rotations,
                     opacities=body.opacities, sh=torch.zeros_like(body.sh) + (0.6 - 0.5) / SH_C0)
    gen = torch.Generator().manual_seed(seed)
    n_marker = 800
    parts = [body]
    for centre, colour in MARKERS.values():
        d = torch.randn(n_marker, 3, generator=gen)
        pos = torch.tensor(centre) + 0.1 * d / d.norm(dim=-1, keepdim=True) * torch.rand(n_marker, 1, generator=gen)
        q = torch.randn(n_marker, 4, generator=gen)
        sh = ((torch.tensor(colour) - 0.5) / SH_C0).expand(n_marker, 1, 3)
        parts.append(Gaussians(positions=pos[None], scales=torch.full((1, n_marker, 3), 0.015),
                               rotations=(q / q.norm(dim=-1, keepdim=True))[None],
                               opacities=torch.full((1, n_marker, 1), 0.9), sh=sh[None].clone()))
    return Gaussians.cat(parts, dim=1)


def camera_info(elevation: float, azimuth: float, radius: float, fovy: float) -> dict:
    """Core's camera_info (three.js world, y-up: the LGM frame) of the LGM orbit camera at
    ``elevation``/``azimuth`` (azimuth 0 = in front, on +z; 90 = on +x)."""
    el, az = math.radians(elevation), math.radians(azimuth)
    pos = (radius * math.cos(el) * math.sin(az), radius * math.sin(el), radius * math.cos(el) * math.cos(az))
    xyz = lambda v: {"x": v[0], "y": v[1], "z": v[2]}  # noqa: E731
    return {"position": xyz(pos), "target": xyz((0.0, 0.0, 0.0)), "fov": fovy, "zoom": 1.0,
            "cameraType": "perspective"}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def marker_centroids(image: torch.Tensor) -> dict[str, np.ndarray]:
    """Pixel centroid (x, y) of each marker colour in an IMAGE [H,W,3]."""
    img = image.float()
    out = {}
    for i, name in enumerate(MARKERS):
        other = [c for c in range(3) if c != i]
        mask = (img[..., i] > 0.5) & (img[..., other[0]] < 0.35) & (img[..., other[1]] < 0.35)
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.numel() > 20, f"{name} marker not visible"
        out[name] = np.array([float(xs.float().mean()), float(ys.float().mean())])
    return out


@pytest.mark.parametrize("elevation,azimuth", [(20.0, 30.0), (-15.0, 200.0)])
def test_pack_and_core_render_the_same_splat_alike(harness, elevation, azimuth):
    """One SPLAT, one camera: LGM Render Splat and core RenderSplat agree (upright, seen from the same side)."""
    from lgm_core.cameras import Cameras

    core_render = require_core_node(harness, "RenderSplat")
    bridge = pack_module("bridge")
    splat = bridge.gaussians_to_splat(marker_scene())
    size, fovy, radius = 160, 49.1, 1.6
    cams = Cameras.orbit(elevation, [azimuth], radius, fovy, size)
    ours = harness.node_classes["LGMRenderSplat"].execute(splat, cams, 0.0, 1.0, "normalized").result[0][0]
    theirs = core_render.execute(splat, size, size, 1, 1.0, 1.0, 0.0, 0.0, "#000000", "color",
                                 camera_info=camera_info(elevation, azimuth, radius, fovy)).result[0][0]
    a, b = marker_centroids(ours), marker_centroids(theirs)
    for name in MARKERS:
        assert np.linalg.norm(a[name] - b[name]) < 2.0, f"{name}: pack {a[name]} vs core {b[name]}"
    assert a["red"][1] < a["green"][1] if elevation > 0 else True  # top marker above the side marker
    print(f"frame contract el={elevation} az={azimuth}: PSNR {psnr(ours, theirs):.2f} dB, centroid offsets "
          + ", ".join(f"{k} {np.linalg.norm(a[k] - b[k]):.2f} px" for k in MARKERS))
    assert psnr(ours, theirs) >= 25.0, f"PSNR {psnr(ours, theirs):.1f} dB"


def test_core_transform_splat_moves_the_same_way_in_both_renderers(harness):
    """Core TransformSplat works in the SPLAT frame (3DGS, +y down): translate_y = +0.2 moves the object
    down on screen in core's RenderSplat, and now in LGM Render Splat too (it moved up there before)."""
    from lgm_core.cameras import Cameras

    transform = require_core_node(harness, "TransformSplat")
    core_render = harness.node_classes["RenderSplat"]
    bridge = pack_module("bridge")
    splat = bridge.gaussians_to_splat(marker_scene())
    schema_inputs = [i.id for i in transform.define_schema().inputs]
    values = {k: 0.0 for k in schema_inputs if k != "splat"}
    values.update({k: 1.0 for k in schema_inputs if k.startswith("scale")})
    values["translate_y"] = 0.2
    moved = transform.execute(splat, **values).result[0]
    size = 128
    cams = Cameras.orbit(0.0, [0.0], 1.6, 49.1, size)
    info = camera_info(0.0, 0.0, 1.6, 49.1)

    def red_y(image):
        return marker_centroids(image)["red"][1]

    ours = [harness.node_classes["LGMRenderSplat"].execute(s, cams, 0.0, 1.0, "normalized").result[0][0]
            for s in (splat, moved)]
    theirs = [core_render.execute(s, size, size, 1, 1.0, 1.0, 0.0, 0.0, "#000000", "color",
                                  camera_info=info).result[0][0] for s in (splat, moved)]
    assert red_y(ours[1]) > red_y(ours[0]) + 5, "pack: SPLAT +y did not move the object down"
    assert red_y(theirs[1]) > red_y(theirs[0]) + 5, "core: SPLAT +y did not move the object down"
