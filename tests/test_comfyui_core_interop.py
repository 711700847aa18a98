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


def _glb_vertex_colours(path) -> np.ndarray:
    """Per-vertex display colours of a .glb (texture sampled at each vertex's UV, else COLOR_0), as
    trimesh reads glTF: one reader for every file compared."""
    import trimesh

    mesh = trimesh.load(path, force="mesh", process=False)
    return np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.float64)[:, :3] / 255.0, \
        np.asarray(mesh.vertices)


def _glb_json(path) -> dict:
    import json
    import struct

    data = path.read_bytes()
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A  # "JSON"
    return json.loads(data[20:20 + length])


def test_pack_mesh_in_core_save_glb_looks_like_the_pack_glb(harness):
    """A textured LGM mesh through core's SaveGLB and MeshToFile3D -> SaveGLB reads back like the pack's
    own GLB (same texture colour at every vertex, >= 40 dB): UVs cross with core's top-left origin."""
    require_core_node(harness, "MeshToFile3D")
    from lgm_core.mesh.synthetic import make_scene
    from lgm_core.ply import save_ply

    g = make_scene("composite", n=6000, seed=4)
    save_ply(g, harness.input_dir / "mesh_interop.ply")
    graph = {
        "1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": "mesh_interop.ply"}},
        "2": {"class_type": "LGMSplatToMesh", "inputs": {"splat": ["1", 0], "resolution": 48, "target_faces": 4000,
                                                         "texture": True, "texture_size": 256, "level": 0.7}},
        "3": {"class_type": "LGMSaveMesh", "inputs": {"mesh": ["2", 0], "filename_prefix": "interop/pack",
                                                      "format": "glb"}},
        "4": {"class_type": "SaveGLB", "inputs": {"mesh": ["2", 0], "filename_prefix": "interop/core"}},
        "5": {"class_type": "MeshToFile3D", "inputs": {"mesh": ["2", 0]}},
        "6": {"class_type": "SaveGLB", "inputs": {"mesh": ["5", 0], "filename_prefix": "interop/file3d"}},
    }
    result = harness.run(graph, extra_data={"extra_pnginfo": {"workflow": {"nodes": ["mesh"]}}})
    ref, ref_v = _glb_vertex_colours(harness.output_path(result.files("3")[0]))
    extras = _glb_json(harness.output_path(result.files("3")[0]))["asset"]["extras"]  # the workflow travels
    assert extras["workflow"] == {"nodes": ["mesh"]} and extras["prompt"]["3"]["class_type"] == "LGMSaveMesh"
    for node, label in (("4", "SaveGLB"), ("6", "MeshToFile3D -> SaveGLB")):
        got, got_v = _glb_vertex_colours(harness.output_path(result.files(node, "3d")[0]))
        assert got_v.shape == ref_v.shape and np.allclose(got_v, ref_v, atol=1e-5), "geometry changed"
        value = psnr(torch.from_numpy(got), torch.from_numpy(ref))
        print(f"pack MESH via core {label}: {value:.1f} dB against the pack's GLB")
        assert value >= 40.0, f"{label}: {value:.1f} dB"


def test_core_mesh_in_lgm_save_mesh_keeps_core_colours(harness):
    """Core SplatToMesh's MESH (linear vertex colours, padded batch fields) saves with LGM Save Mesh;
    the file holds the display (sRGB) colours of core's linear ones, the geometry as given."""
    require_core_node(harness, "SplatToMesh")
    import trimesh

    from lgm_core.mesh.synthetic import make_scene

    splat = pack_module("bridge").gaussians_to_splat(make_scene("sphere", n=4000, seed=1))
    core_mesh = harness.node_classes["SplatToMesh"].execute(splat, 64, 5, 0, 0.4, 100, 0.02, 2.0).result[0]
    out = harness.node_classes["LGMSaveMesh"].execute(core_mesh, "interop/from_core", "ply")
    path = harness.output_dir / out.result[0]
    mesh = trimesh.load(path, force="mesh", process=False)
    n = int(core_mesh.vertex_counts[0]) if core_mesh.vertex_counts is not None else core_mesh.vertices.shape[1]
    assert len(mesh.vertices) == n
    assert np.allclose(mesh.vertices, core_mesh.vertices[0, :n].numpy(), atol=1e-5)
    lin = core_mesh.vertex_colors[0, :n, :3].double().clamp(0, 1)
    srgb = torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    got = torch.from_numpy(np.asarray(mesh.visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0)
    assert float((got - srgb).abs().max()) <= 1.0 / 255 + 1e-6


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz", "ksplat"])
def test_splat_files_round_trip_between_pack_and_core(harness, fmt):
    """The same object saved in any format by LGM Save Splat loads upright in core's File3DToSplat, and
    core's own files (SplatToFile3D) load upright in LGM Load Splat: renders match the original."""
    to_splat = require_core_node(harness, "File3DToSplat")
    from comfy_api.latest import Types
    from lgm_core.cameras import Cameras

    bridge = pack_module("bridge")
    original = bridge.gaussians_to_splat(marker_scene(seed=3))
    cams = Cameras.orbit(25.0, [40.0], 1.6, 49.1, 96)
    render = harness.node_classes["LGMRenderSplat"]

    def image(splat):
        return render.execute(splat, cams, 1.0, 1.0, "normalized").result[0][0]

    reference = image(original)
    out = harness.node_classes["LGMSaveSplat"].execute(original, f"roundtrip/{fmt}", 0.0, fmt)
    saved = harness.output_dir / out.result[0]
    assert saved.suffix == f".{fmt}"
    in_core = to_splat.execute(Types.File3D(str(saved))).result[0]
    value = psnr(image(in_core), reference)
    assert value >= 35.0, f"pack {fmt} -> core File3DToSplat: {value:.1f} dB"
    core_writers = [o for o in harness.node_classes["SplatToFile3D"].define_schema().inputs if o.id == "format"][0]
    if fmt in core_writers.options:
        file3d = harness.node_classes["SplatToFile3D"].execute(original, fmt).result[0]
        name = f"core_written.{fmt}"
        (harness.input_dir / name).write_bytes(file3d.get_bytes())
        back = harness.node_classes["LGMLoadSplat"].execute(name, "auto").result[0]
        value = psnr(image(back), reference)
        assert value >= 35.0, f"core {fmt} -> LGM Load Splat: {value:.1f} dB"
    if fmt == "ply":  # the workflow travels in the file
        graph = {"1": {"class_type": "LGMLoadSplat", "inputs": {"ply_file": f"core_written.{fmt}"}},
                 "2": {"class_type": "LGMSaveSplat", "inputs": {"splat": ["1", 0], "filename_prefix": "roundtrip/meta",
                                                                "min_opacity": 0.0, "format": "ply"}}}
        result = harness.run(graph, extra_data={"extra_pnginfo": {"workflow": {"nodes": ["x"]}}})
        header = harness.output_path(result.files("2")[0]).read_bytes()[:8192]
        assert b"comment prompt {" in header and b'comment workflow {"nodes":["x"]}' in header


def test_spz_with_higher_sh_between_pack_and_core(harness):
    """A SPLAT with SH degree 3 (core's SPLAT may carry it: TripoSplat, a 3DGS .ply) keeps every band
    through LGM Save Splat .spz -> LGM Load Splat, and core's File3DToSplat reads the same file (its
    reader keeps the base colour) with the same positions and colours."""
    to_splat = require_core_node(harness, "File3DToSplat")
    from comfy_api.latest import Types

    bridge = pack_module("bridge")
    g = marker_scene(seed=4)
    rest = torch.rand(1, g.num_gaussians, 15, 3, generator=torch.Generator().manual_seed(2)) * 0.6 - 0.3
    g.sh = torch.cat([g.sh, rest], 2)
    original = bridge.gaussians_to_splat(g)
    out = harness.node_classes["LGMSaveSplat"].execute(original, "sh3/spz", 0.0, "spz")
    saved = harness.output_dir / out.result[0]
    (harness.input_dir / "sh3.spz").write_bytes(saved.read_bytes())
    back = harness.node_classes["LGMLoadSplat"].execute("sh3.spz", "auto").result[0]
    assert back.sh.shape == original.sh.shape == (1, g.num_gaussians, 16, 3)
    assert float((back.sh[..., 1:, :] - original.sh[..., 1:, :]).abs().max()) <= 0.5 / 128 + 1e-6
    assert float((back.positions - original.positions).abs().max()) < 2e-4
    in_core = to_splat.execute(Types.File3D(str(saved))).result[0]
    assert in_core.positions.shape == back.positions.shape
    assert float((in_core.positions - back.positions).abs().max()) < 1e-5
    assert float((in_core.sh[..., 0, :] - back.sh[..., 0, :]).abs().max()) < 0.02  # core's colour decode


def _core_mesh_from_glb(path):
    """A core MESH of a .glb as an independent reader (trimesh) sees it, in core's conventions: glTF UVs
    (origin top-left; trimesh flips them to bottom-left on load, flipped back here), the base-colour
    texture as display values, COLOR_0 (glTF: linear) as linear vertex colours."""
    import trimesh

    from comfy_api.latest import Types

    mesh = trimesh.load(path, force="mesh", process=False)
    vertices = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)[None]
    faces = torch.tensor(np.asarray(mesh.faces), dtype=torch.int64)[None]
    visual = mesh.visual
    if getattr(visual, "uv", None) is not None:
        uv = np.asarray(visual.uv, dtype=np.float32)
        uv = torch.from_numpy(np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1))[None]
        image = np.asarray(visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255.0
        return Types.MESH(vertices, faces, uvs=uv, texture=torch.from_numpy(image)[None])
    return Types.MESH(vertices, faces, vertex_colors=torch.from_numpy(_glb_attribute(path, "COLOR_0"))[None])


def _core_mesh_like(mesh, **fields):
    """Core MESH with ``mesh``'s geometry and the given other fields."""
    from comfy_api.latest import Types

    return Types.MESH(mesh.vertices, mesh.faces, **fields)


def _glb_attribute(path, name: str) -> np.ndarray:
    """Vertex attribute ``name`` of a one-primitive .glb, float components as stored (trimesh drops
    COLOR_0 when the primitive has a material, so it is read from the binary chunk here)."""
    import struct

    gltf = _glb_json(path)
    data = path.read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    binary = data[20 + json_length + 8:]
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"][name]]
    assert accessor["componentType"] == 5126, f"{name}: not float"
    view = gltf["bufferViews"][accessor["bufferView"]]
    width = {"VEC3": 3, "VEC4": 4}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    values = np.frombuffer(binary, dtype="<f4", count=accessor["count"] * width, offset=start)
    return values.reshape(-1, width)[:, :3].copy()


@pytest.mark.parametrize("textured", [True, False], ids=["texture", "vertex-colours"])
def test_pack_mesh_in_core_render_mesh_looks_like_the_pack_glb(harness, textured):
    """Core RenderMesh shows the pack's MESH (LGM Splat to Mesh) as it shows the pack's own GLB read back
    by another reader (same rasteriser, same cameras): UV origin, texture and vertex-colour space agree
    (>= 40 dB), the silhouette is the same pixel for pixel; and the vertex colours show as the library
    mesh's display (sRGB) colours (>= 40 dB; core's 2.2 gamma is not quite the sRGB curve)."""
    render = require_core_node(harness, "RenderMesh")
    from lgm_core.mesh.synthetic import make_scene

    splat = pack_module("bridge").gaussians_to_splat(make_scene("composite", n=6000, seed=4))
    mesh = harness.node_classes["LGMSplatToMesh"].execute(splat, 48, 4000, textured, 256, 0.7).result[0]
    name = harness.node_classes["LGMSaveMesh"].execute(mesh, f"interop/render_{int(textured)}", "glb").result[0]
    from_glb = _core_mesh_from_glb(harness.output_dir / name)
    mode = "texture" if textured else "vertex colors"
    for elevation, azimuth in ((15.0, 30.0), (-20.0, 210.0)):
        info = camera_info(elevation, azimuth, 2.0, 40.0)
        ours, our_mask = render.execute(mesh, mode, 128, 128, "#000000", camera_info=info).result
        ref, ref_mask = render.execute(from_glb, mode, 128, 128, "#000000", camera_info=info).result
        assert float(our_mask.sum()) > 0.1 * our_mask.numel(), "the mesh is not in view"
        assert torch.equal(our_mask, ref_mask), "silhouettes differ: geometry changed"
        hit = our_mask[0] > 0.5
        value = psnr(ours[0][hit], ref[0][hit])
        print(f"pack MESH ({mode}) in core RenderMesh el={elevation} az={azimuth}: {value:.1f} dB "
              f"against the pack's GLB ({int(hit.sum())} px)")
        assert value >= 40.0, f"{mode}: {value:.1f} dB"
    if not textured:  # absolute colour (last camera): core shows linear vertex colours c as c ** (1/2.2)
        from lgm_core.mesh import extract_mesh

        display = extract_mesh(pack_module("bridge").splat_to_gaussians(splat), resolution=48, target_faces=4000,
                               texture_size=256, texture=False, level=0.7).vertex_colors
        assert display is not None and display.shape[0] == mesh.vertices.shape[1]
        shown_as_display = _core_mesh_like(mesh, vertex_colors=display[None].clamp(0, 1) ** 2.2)
        ref = render.execute(shown_as_display, mode, 128, 128, "#000000", camera_info=info).result[0]
        value = psnr(ours[0][hit], ref[0][hit])
        print(f"pack MESH vertex colours in core RenderMesh vs their display values: {value:.1f} dB "
              "(sRGB curve vs core's 2.2 gamma)")
        assert value >= 40.0, f"vertex colours not shown as their display values: {value:.1f} dB"
