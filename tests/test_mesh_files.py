"""Mesh files as other tools read them: glTF material/colour space/validator, OBJ sets, welded PLY."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from lgm_core.mesh import Mesh
from lgm_core.mesh.files import glb_bytes, weld
from lgm_core.mesh.texturing import linear_to_srgb, srgb_to_linear

REPO = Path(__file__).resolve().parents[1]
VALIDATOR_VERSION = "2.0.0-dev.3.10"
VALIDATOR_DIR = REPO / ".tools" / "gltf-validator"  # ignored by git


def _uv_sphere(textured: bool, n: int = 24) -> Mesh:
    """A UV sphere whose texture seam duplicates vertices (like an xatlas atlas)."""
    th = torch.linspace(0, math.pi, n + 1)
    ph = torch.linspace(0, 2 * math.pi, 2 * n + 1)  # first and last column coincide: a seam
    T, P = torch.meshgrid(th, ph, indexing="ij")
    v = torch.stack([T.sin() * P.cos(), T.cos(), T.sin() * P.sin()], -1)
    v[:, -1] = v[:, 0]  # exact seam copies
    v[0], v[-1] = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 0.0])  # exact poles
    v = v.reshape(-1, 3)
    uv = torch.stack([P / (2 * math.pi), 1 - T / math.pi], -1).reshape(-1, 2)
    faces = []
    w = 2 * n + 1
    for i in range(n):
        for j in range(2 * n):
            a, b, c, d = i * w + j, i * w + j + 1, (i + 1) * w + j, (i + 1) * w + j + 1
            faces += [[a, b, d], [a, d, c]]
    mesh = Mesh(v, torch.tensor(faces), uvs=uv, vertex_colors=(0.5 + 0.4 * v).clamp(0, 1))
    if mesh.signed_volume() < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, [0, 2, 1]], uvs=mesh.uvs, vertex_colors=mesh.vertex_colors)
    if textured:
        tex = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
        mesh = Mesh(mesh.vertices, mesh.faces, uvs=mesh.uvs, texture=tex)
    return mesh.compute_normals()


def _glb_json(data: bytes) -> dict:
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and total == len(data)
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    return json.loads(data[20:20 + length])


def _accessor(data: bytes, doc: dict, index: int) -> np.ndarray:
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    length = struct.unpack_from("<I", data, 12)[0]
    start = 20 + length + 8 + view["byteOffset"]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc["type"]]
    dtype = {5126: np.float32, 5125: np.uint32, 5123: np.uint16}[acc["componentType"]]
    return np.frombuffer(data, dtype, acc["count"] * width, start).reshape(acc["count"], width)


def test_vertex_colour_glb_has_a_non_metallic_material_and_linear_colours():
    mesh = _uv_sphere(textured=False)
    data = glb_bytes(mesh)
    doc = _glb_json(data)
    prim = doc["meshes"][0]["primitives"][0]
    pbr = doc["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 1.0
    assert "extensionsUsed" not in doc and "TEXCOORD_0" not in prim
    colors = _accessor(data, doc, prim["attributes"]["COLOR_0"])
    assert np.allclose(colors, srgb_to_linear(mesh.vertex_colors).numpy(), atol=1e-6)
    assert colors.mean() < mesh.vertex_colors.mean().item() - 0.1  # linear values are darker than sRGB ones
    unlit = _glb_json(glb_bytes(mesh, unlit=True))
    assert unlit["extensionsUsed"] == ["KHR_materials_unlit"]
    assert unlit["materials"][0]["extensions"] == {"KHR_materials_unlit": {}}


def test_glb_round_trip_keeps_display_colours_and_flips_uvs(tmp_path):
    plain = _uv_sphere(textured=False)
    back = Mesh.load(plain.export(tmp_path / "c.glb"))
    assert torch.allclose(back.vertex_colors[:, :3], plain.vertex_colors, atol=2 / 255)
    textured = _uv_sphere(textured=True)
    data = glb_bytes(textured)
    doc = _glb_json(data)
    uv = _accessor(data, doc, doc["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"])
    assert np.allclose(uv[:, 1], 1 - textured.uvs[:, 1].numpy())  # glTF: origin at the top-left
    assert "COLOR_0" not in doc["meshes"][0]["primitives"][0]["attributes"]  # would tint the texture
    back = Mesh.load(textured.export(tmp_path / "t.glb"))
    assert torch.allclose(back.uvs, textured.uvs, atol=1e-6) and back.texture.shape == textured.texture.shape
    assert linear_to_srgb(srgb_to_linear(torch.tensor([0.0, 0.2, 0.5, 1.0]))).allclose(
        torch.tensor([0.0, 0.2, 0.5, 1.0]), atol=1e-6)


def test_ply_is_welded_and_closed(tmp_path):
    mesh = _uv_sphere(textured=True)
    n_positions = torch.unique(mesh.vertices, dim=0).shape[0]
    assert n_positions < mesh.num_vertices  # the seam and the poles are duplicated
    loaded = Mesh.load(mesh.export(tmp_path / "m.ply"))
    assert loaded.num_vertices == n_positions
    edges = np.sort(np.concatenate([loaded.faces.numpy()[:, [0, 1]], loaded.faces.numpy()[:, [1, 2]],
                                    loaded.faces.numpy()[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # watertight and manifold once welded
    v, f, col = weld(mesh)
    assert col.shape == (n_positions, 3) and f.shape[0] == loaded.num_faces


def test_obj_never_overwrites_files_it_did_not_write(tmp_path):
    mesh = _uv_sphere(textured=True)
    strangers = {"m.mtl": b"newmtl mine\n", "m.png": b"not ours"}
    for name, data in strangers.items():
        (tmp_path / name).write_bytes(data)
    mesh.export(tmp_path / "m.obj")
    for name, data in strangers.items():
        assert (tmp_path / name).read_bytes() == data
    assert len(list(tmp_path.glob("m.*.mtl"))) == 1 and len(list(tmp_path.glob("m.*.png"))) == 1
    # a file squatting on the derived name with other content is refused, nothing changes
    tag_name = next(tmp_path.glob("m.*.mtl")).name
    mesh2 = Mesh(mesh.vertices, mesh.faces, uvs=mesh.uvs, texture=mesh.texture.flip(0))
    body_before = (tmp_path / "m.obj").read_bytes()
    mesh2.export(tmp_path / "m.obj")  # a new set: derived names differ, old companions removed
    assert (tmp_path / "m.obj").read_bytes() != body_before and not (tmp_path / tag_name).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == sorted(
        ["m.mtl", "m.png", "m.obj", *[p.name for p in tmp_path.glob("m.*.mtl")], *[p.name for p in tmp_path.glob("m.*.png")]])


def _validator() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the Khronos glTF validator needs node and npm (not installed)")
    module = VALIDATOR_DIR / "node_modules" / "gltf-validator"
    if not module.is_dir():
        try:
            subprocess.run([npm, "install", "--prefix", str(VALIDATOR_DIR), "--no-audit", "--no-fund",
                            f"gltf-validator@{VALIDATOR_VERSION}"], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"npm could not install gltf-validator@{VALIDATOR_VERSION} (offline?): {exc}")
    return module


VALIDATE_JS = """
const fs = require('fs'); const v = require(process.argv[1]);
v.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), {maxIssues: 50})
  .then(r => { console.log(JSON.stringify(r.issues)); })
  .catch(e => { console.error(e); process.exit(2); });
"""


def validate_glb(path: Path) -> dict:
    """The Khronos validator's issue summary of a .glb (numErrors, numWarnings, messages)."""
    module = _validator()
    out = subprocess.run(["node", "-e", VALIDATE_JS, str(module), str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("textured,unlit", [(True, False), (False, False), (False, True)])
def test_glb_passes_the_khronos_validator(tmp_path, textured, unlit):
    meta = {"prompt": {"3": {"class_type": "LGMSaveMesh"}}, "workflow": {"nodes": []}} if textured else None
    path = _uv_sphere(textured).export(tmp_path / "m.glb", unlit=unlit, metadata=meta)
    if meta:  # a ComfyUI workflow travels in asset.extras
        assert _glb_json(path.read_bytes())["asset"]["extras"] == meta
    issues = validate_glb(path)
    bad = [m for m in issues["messages"] if m["severity"] <= 1]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, bad
