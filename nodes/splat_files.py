"""Saving and loading Gaussian splats (.ply, the standard 3DGS layout, +y up LGM frame)."""

from __future__ import annotations

import os

from . import comfy_api as api
from .comfy_api import io
from .types import CATEGORY, Splat, gaussians_to_splat, splat_to_gaussians

SPLAT_EXTENSIONS = (".ply",)


class LGMSaveSplat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMSaveSplat",
            display_name="LGM Save Splat",
            category=CATEGORY,
            description="Saves Gaussian splats as standard 3DGS .ply files (one per batch item) in the output folder. "
                        "Values in the LGM frame (+y up, front +z); Gaussians below min_opacity are dropped.",
            is_output_node=True,
            inputs=[
                Splat.Input("splat", tooltip="Gaussians to save (from LGM or core nodes)."),
                io.String.Input("filename_prefix", default="lgm/splat",
                                tooltip="Output path prefix inside ComfyUI's output folder; a counter is appended."),
                io.Float.Input("min_opacity", default=0.005, min=0.0, max=1.0, step=0.001,
                               tooltip="Gaussians with a lower opacity are left out (0.005 as the original)."),
            ],
            outputs=[io.String.Output(display_name="ply_file",
                                      tooltip="Path of the (first) file relative to the output folder.")],
        )

    @classmethod
    def execute(cls, splat, filename_prefix, min_opacity) -> io.NodeOutput:
        from lgm_core.ply import save_ply

        gaussians = splat_to_gaussians(splat).to("cpu")
        records = []
        for i in range(gaussians.batch_size):
            path, record = api.output_file_path(filename_prefix, "ply")
            save_ply(gaussians, path, min_opacity=float(min_opacity), index=i)
            records.append(record)
        first = records[0]
        rel = "/".join(p for p in (first["subfolder"], first["filename"]) if p)
        return io.NodeOutput(rel, ui={"splats": records})


class LGMLoadSplat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMLoadSplat",
            display_name="LGM Load Splat",
            category=CATEGORY,
            description="Loads a 3D Gaussian splatting .ply file (from LGM or any standard 3DGS tool) from the input "
                        "folder. Files are read as they are: 3DGS scenes from COLMAP pipelines are y-down.",
            inputs=[
                io.Combo.Input("ply_file", options=api.input_file_names(SPLAT_EXTENSIONS),
                               upload=io.UploadType.model,
                               tooltip="A .ply file in ComfyUI's input folder (upload one with the button)."),
            ],
            outputs=[Splat.Output(display_name="splat", tooltip="The loaded Gaussians (batch of 1).")],
        )

    @classmethod
    def execute(cls, ply_file) -> io.NodeOutput:
        from lgm_core.ply import load_ply

        path = api.input_file_path(ply_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"splat file not found: {ply_file} (looked in the input folder)")
        return io.NodeOutput(gaussians_to_splat(load_ply(path)))

    @classmethod
    def fingerprint_inputs(cls, ply_file):
        path = api.input_file_path(ply_file)
        return os.path.getmtime(path) if os.path.isfile(path) else ply_file

    @classmethod
    def validate_inputs(cls, ply_file):
        if not ply_file.lower().endswith(SPLAT_EXTENSIONS):
            return f"not a .ply file: {ply_file}"
        return True
