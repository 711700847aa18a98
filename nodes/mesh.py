"""Gaussians -> textured mesh (core MESH) and mesh files (.glb/.obj/.ply) for core's 3D viewer."""

from __future__ import annotations

import torch

from . import comfy_api as api
from .comfy_api import io
from .types import CATEGORY, Splat, check_choice, first_error, splat_to_gaussians

MESH_FORMATS = ["glb", "obj", "ply"]


class LGMSplatToMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMSplatToMesh",
            display_name="LGM Splat to Mesh",
            category=CATEGORY,
            description="Extracts a watertight triangle mesh from Gaussians (density volume + marching cubes + "
                        "decimation) with a baked UV texture and vertex colours. Output is core's MESH (geometry for "
                        "core nodes; uvs/texture/vertex_colors attached for LGM Save Mesh and newer cores).",
            inputs=[
                Splat.Input("splat", tooltip="Gaussians of one object (the first batch item is used)."),
                io.Int.Input("resolution", default=256, min=32, max=512, step=16,
                             tooltip="Voxels along the longest side; detail vs time (cost grows with its cube)."),
                io.Int.Input("target_faces", default=50000, min=1000, max=1000000, step=1000,
                             tooltip="Upper bound on the number of triangles (quadric decimation)."),
                io.Boolean.Input("texture", default=True,
                                 tooltip="Bake a UV texture (xatlas). Off: vertex colours only (faster)."),
                io.Int.Input("texture_size", default=1024, min=128, max=4096, step=128,
                             tooltip="Side of the square texture in pixels."),
                io.Float.Input("level", default=0.7, min=0.05, max=10.0, step=0.05,
                               tooltip="Iso-level of the opacity density (1 = peak of one opaque Gaussian); "
                                       "lower = fatter surface."),
            ],
            outputs=[io.Mesh.Output(display_name="mesh", tooltip="Core MESH (batch of 1).")],
        )

    @classmethod
    def execute(cls, splat, resolution, target_faces, texture, texture_size, level) -> io.NodeOutput:
        from lgm_core.mesh import extract_mesh

        gaussians = splat_to_gaussians(splat)
        if gaussians.batch_size > 1:
            gaussians = gaussians[0:1]
        progress = api.Progress(100)
        mesh = extract_mesh(gaussians, resolution=int(resolution), target_faces=int(target_faces),
                            texture_size=int(texture_size), texture=bool(texture), level=float(level),
                            device=api.torch_device(),
                            progress=lambda _msg, frac: progress.update(int(round(100 * frac))))
        return io.NodeOutput(_to_core_mesh(mesh))


def _to_core_mesh(mesh):
    """lgm_core Mesh (unbatched, CPU) -> core MESH with a batch axis of 1."""
    extras = {k: getattr(mesh, k) for k in ("uvs", "vertex_colors", "texture", "normals")}
    extras = {k: v[None] for k, v in extras.items() if v is not None}
    return api.make_mesh(mesh.vertices[None], mesh.faces[None], **extras)


def _from_core_mesh(mesh, i: int):
    """Batch item ``i`` of a core MESH (ours or another node's) -> lgm_core Mesh."""
    from lgm_core.mesh import Mesh

    def item(name):
        value = getattr(mesh, name, None)
        if not torch.is_tensor(value):
            return None
        batched = value.dim() == (4 if name == "texture" else 3)
        return value[i] if batched else value

    vertices, faces = item("vertices"), item("faces")
    if vertices is None or faces is None:
        raise ValueError(f"expected a MESH with vertices and faces tensors, got {type(mesh).__name__}")
    counts_v, counts_f = getattr(mesh, "vertex_counts", None), getattr(mesh, "face_counts", None)
    if torch.is_tensor(counts_v):  # padded batches of newer cores
        vertices = vertices[: int(counts_v[i])]
    if torch.is_tensor(counts_f):
        faces = faces[: int(counts_f[i])]
    extras = {k: item(k) for k in ("uvs", "vertex_colors", "texture", "normals")}
    n = vertices.shape[0]
    for k in ("uvs", "vertex_colors", "normals"):
        if extras[k] is not None and extras[k].shape[0] != n:
            extras[k] = None
    if extras["texture"] is not None and extras["uvs"] is None:
        extras["texture"] = None
    return Mesh(vertices=vertices.float().cpu(), faces=faces.long().cpu(),
                **{k: (v.float().cpu() if v is not None else None) for k, v in extras.items()})


class LGMSaveMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMSaveMesh",
            display_name="LGM Save Mesh",
            category=CATEGORY,
            description="Saves meshes (with texture/vertex colours when present) as .glb (shown by core's 3D viewer: "
                        "connect model_file to Preview 3D), .obj (+ .mtl + .png) or .ply in the output folder.",
            is_output_node=True,
            inputs=[
                io.Mesh.Input("mesh", tooltip="A MESH from LGM Splat to Mesh or core nodes."),
                io.String.Input("filename_prefix", default="lgm/mesh",
                                tooltip="Output path prefix inside ComfyUI's output folder; a counter is appended."),
                io.Combo.Input("format", options=MESH_FORMATS, default="glb",
                               tooltip="glb: one file, textured, y-up (viewers, Blender); obj: + .mtl and .png; "
                                       "ply: vertex colours."),
            ],
            outputs=[io.String.Output(display_name="model_file",
                                      tooltip="Path of the (first) file relative to the output folder, for "
                                              "core's Preview 3D.")],
        )

    @classmethod
    def validate_inputs(cls, format):
        return first_error(check_choice("format", format, MESH_FORMATS))

    @classmethod
    def execute(cls, mesh, filename_prefix, format) -> io.NodeOutput:
        records = []
        vertices = getattr(mesh, "vertices", None)
        batch = vertices.shape[0] if torch.is_tensor(vertices) and vertices.dim() == 3 else 1
        for i in range(batch):
            path, record = api.output_file_path(filename_prefix, format)
            _from_core_mesh(mesh, i).export(path)
            records.append(record)
        first = records[0]
        rel = "/".join(p for p in (first["subfolder"], first["filename"]) if p)
        return io.NodeOutput(rel, ui={"3d": records})
