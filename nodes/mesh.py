"""Gaussians -> textured mesh (core MESH) and mesh files (.glb/.obj/.ply) for core's 3D viewer."""

from __future__ import annotations

from lgm_core.mesh.extract import DEFAULT_LEVEL

from . import devices, files
from .bridge import mesh_batch_size, mesh_from_core, mesh_to_core, splat_to_gaussians
from .comfy_api import io
from .progress import Progress
from .types import CATEGORY, Splat, check_choice, first_error

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
                                 tooltip="Bake a UV texture (axis-chart atlas). Off: vertex colours only (faster)."),
                io.Int.Input("texture_size", default=1024, min=128, max=4096, step=128,
                             tooltip="Side of the square texture in pixels."),
                io.Float.Input("level", default=DEFAULT_LEVEL, min=0.05, max=10.0, step=0.05,
                               tooltip="Iso-level of the opacity density (1 = peak of one opaque Gaussian); "
                                       "lower = fatter surface. With calibrate_level on: the highest level used."),
                io.Boolean.Input("calibrate_level", default=False, optional=True,
                                 tooltip="Calibrate the iso-level on the splat's own renders (the density where its "
                                         "surface is seen), at most 'level'. Sharper colours on faint, fuzzy splats "
                                         "(e.g. the demo model: +0.5 dB mesh-render PSNR), one extra render pass."),
            ],
            outputs=[io.Mesh.Output(display_name="mesh", tooltip="Core MESH (batch of 1).")],
        )

    @classmethod
    def execute(cls, splat, resolution, target_faces, texture, texture_size, level,
                calibrate_level=False) -> io.NodeOutput:
        from lgm_core.mesh import extract_mesh

        gaussians = splat_to_gaussians(splat)
        if gaussians.batch_size > 1:
            gaussians = gaussians[0:1]
        progress = Progress(100)
        mesh = extract_mesh(gaussians, resolution=int(resolution), target_faces=int(target_faces),
                            texture_size=int(texture_size), texture=bool(texture),
                            level="auto" if calibrate_level else float(level),
                            max_level=float(level) if calibrate_level else None, device=devices.torch_device(),
                            progress=lambda _msg, frac: progress.update(int(round(100 * frac))))
        return io.NodeOutput(mesh_to_core(mesh))


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
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
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
        metadata = files.workflow_metadata(getattr(cls, "hidden", None))  # embedded in .glb (asset.extras)
        for i in range(mesh_batch_size(mesh)):
            path, record = files.output_file_path(filename_prefix, format)
            mesh_from_core(mesh, i).export(path, metadata=metadata)
            records.append(record)
        first = records[0]
        rel = "/".join(p for p in (first["subfolder"], first["filename"]) if p)
        return io.NodeOutput(rel, ui={"3d": records})
