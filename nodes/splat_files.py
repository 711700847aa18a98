"""Saving and loading Gaussian splats (.ply, the standard 3DGS layout, +y up LGM frame)."""

from __future__ import annotations

import os

from lgm_core.paths import split_annotated_name

from . import files
from .bridge import gaussians_to_splat, splat_to_gaussians
from .comfy_api import io
from .types import CATEGORY, Splat, check_choice, first_error

SPLAT_EXTENSIONS = (".ply",)
SAVE_FORMATS = ["ply", "splat", "ply+splat"]


class LGMSaveSplat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMSaveSplat",
            display_name="LGM Save Splat",
            category=CATEGORY,
            description="Saves Gaussian splats (one file per batch item) in the output folder: standard 3DGS .ply "
                        "(LGM frame, +y up, front +z, as the original LGM writes it) and/or compact .splat for web "
                        "viewers (y-down 3DGS convention, DC colour). Gaussians below min_opacity are dropped.",
            is_output_node=True,
            inputs=[
                Splat.Input("splat", tooltip="Gaussians to save (from LGM or core nodes)."),
                io.String.Input("filename_prefix", default="lgm/splat",
                                tooltip="Output path prefix inside ComfyUI's output folder; a counter is appended."),
                io.Float.Input("min_opacity", default=0.005, min=0.0, max=1.0, step=0.001,
                               tooltip="Gaussians with a lower opacity are left out (0.005 as the original)."),
                io.Combo.Input("format", options=SAVE_FORMATS, default="ply", optional=True,
                               tooltip="ply: full 3DGS file (any 3DGS tool, LGM Load Splat); splat: 32 bytes per "
                                       "Gaussian for web splat viewers; ply+splat: both."),
            ],
            outputs=[io.String.Output(display_name="file",
                                      tooltip="Path of the (first) file relative to the output folder.")],
        )

    @classmethod
    def validate_inputs(cls, format="ply"):
        return first_error(check_choice("format", format, SAVE_FORMATS))

    @classmethod
    def execute(cls, splat, filename_prefix, min_opacity, format="ply") -> io.NodeOutput:
        from lgm_core.ply import save_ply
        from lgm_core.splat_formats import save_splat

        gaussians = splat_to_gaussians(splat).to("cpu")
        writers = {"ply": save_ply, "splat": save_splat}
        records = []
        for i in range(gaussians.batch_size):
            exts = format.split("+")
            for ext, (path, record) in zip(exts, files.output_file_paths(filename_prefix, exts)):  # one counter
                writers[ext](gaussians, path, min_opacity=float(min_opacity), index=i)
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
                io.Combo.Input("ply_file", options=files.input_file_names(SPLAT_EXTENSIONS),
                               upload=io.UploadType.model,
                               tooltip="A .ply file in ComfyUI's input folder (upload one with the button)."),
            ],
            outputs=[Splat.Output(display_name="splat", tooltip="The loaded Gaussians (batch of 1).")],
        )

    @classmethod
    def execute(cls, ply_file) -> io.NodeOutput:
        from lgm_core.ply import load_ply

        path = files.input_file_path(ply_file)  # contained in its folder, or UnsafePathError
        if not os.path.isfile(path):
            raise FileNotFoundError(f"splat file not found: {ply_file} (looked in the input folder)")
        return io.NodeOutput(gaussians_to_splat(load_ply(path)))

    @classmethod
    def fingerprint_inputs(cls, ply_file):
        try:
            path = files.input_file_path(ply_file)
        except ValueError:  # validate_inputs reports it; never stat a path outside the folders
            return ply_file
        return os.path.getmtime(path) if os.path.isfile(path) else ply_file

    @classmethod
    def validate_inputs(cls, ply_file):
        if not isinstance(ply_file, str):
            return f"ply_file must be a file name, got {type(ply_file).__name__}"
        base = split_annotated_name(ply_file)[0]
        if not base.lower().endswith(SPLAT_EXTENSIONS):
            return f"not a .ply file: {ply_file}"
        try:
            path = files.input_file_path(ply_file)
        except ValueError as exc:
            return f"ply_file: {exc}"
        if not os.path.isfile(path):
            return f"splat file not found: {ply_file} (looked in the {split_annotated_name(ply_file)[1]} folder)"
        return True
