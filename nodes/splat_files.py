"""Saving and loading Gaussian splats: .ply, .splat, .spz and .ksplat (``lgm_core.splat_io``).

Every file holds the 3DGS frame (y down, z forward), as core's SPLAT and web viewers do, so a file
saved here opens upright in core's File3DToSplat / PreviewGaussianSplat and in other splat viewers,
and core's files load upright here (docs/comfyui.md, "Frame contract").
"""

from __future__ import annotations

import os

from lgm_core.paths import split_annotated_name

from . import files
from .bridge import gaussians_to_splat, splat_to_gaussians
from .comfy_api import io
from .types import CATEGORY, Splat, check_choice, first_error

SPLAT_EXTENSIONS = (".ply", ".splat", ".spz", ".ksplat")
SAVE_FORMATS = ["ply", "splat", "spz", "ksplat", "ply+splat"]
LOAD_FRAMES = ["auto", "3dgs", "lgm"]
_FRAME_TIP = ("Frame of the file. auto: a .ply that states its frame in its header is read so; the original "
              "LGM code's .ply (its exact layout, y-up) as lgm; everything else as 3dgs (y down, z forward: "
              "core, web viewers, 3DGS trainers, this pack's files). Force 3dgs or lgm when a file looks upside "
              "down.")


class LGMSaveSplat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMSaveSplat",
            display_name="LGM Save Splat",
            category=CATEGORY,
            description="Saves Gaussian splats (one file per batch item) in the output folder, in the 3DGS frame "
                        "(y down, z forward) that core and web splat viewers expect: standard 3DGS .ply (full SH; "
                        "embeds the workflow), compact .splat, .spz (Niantic, ~10x smaller) or .ksplat (the DC colour "
                        "only). Gaussians below min_opacity are dropped.",
            is_output_node=True,
            inputs=[
                Splat.Input("splat", tooltip="Gaussians to save (from LGM or core nodes)."),
                io.String.Input("filename_prefix", default="lgm/splat",
                                tooltip="Output path prefix inside ComfyUI's output folder; a counter is appended."),
                io.Float.Input("min_opacity", default=0.005, min=0.0, max=1.0, step=0.001,
                               tooltip="Gaussians with a lower opacity are left out (0.005 as the original)."),
                io.Combo.Input("format", options=SAVE_FORMATS, default="ply", optional=True,
                               tooltip="ply: full 3DGS file (any 3DGS tool; the workflow is embedded in its header); "
                                       "splat: 32 bytes per Gaussian; spz: gzip-compressed, smallest; ksplat: "
                                       "GaussianSplats3D; ply+splat: both, one counter."),
            ],
            outputs=[io.String.Output(display_name="file",
                                      tooltip="Path of the (first) file relative to the output folder.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def validate_inputs(cls, format="ply"):
        return first_error(check_choice("format", format, SAVE_FORMATS))

    @classmethod
    def execute(cls, splat, filename_prefix, min_opacity, format="ply") -> io.NodeOutput:
        from lgm_core.splat_io import save_splat_file

        gaussians = splat_to_gaussians(splat).to("cpu")
        metadata = files.workflow_metadata(getattr(cls, "hidden", None))
        records = []
        for i in range(gaussians.batch_size):
            exts = format.split("+")
            for path, record in files.output_file_paths(filename_prefix, exts):  # one counter per item
                save_splat_file(gaussians, path, min_opacity=float(min_opacity), index=i, metadata=metadata)
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
            description="Loads a Gaussian splat file (.ply, .splat, .spz, .ksplat; from LGM, core's Save nodes or any "
                        "3DGS tool) from the input folder, as a SPLAT in core's frame.",
            inputs=[
                io.Combo.Input("ply_file", display_name="splat_file", options=files.input_file_names(SPLAT_EXTENSIONS),
                               upload=io.UploadType.model,
                               tooltip="A .ply/.splat/.spz/.ksplat file in ComfyUI's input folder (upload one with "
                                       "the button)."),
                io.Combo.Input("frame", options=LOAD_FRAMES, default="auto", optional=True, tooltip=_FRAME_TIP),
            ],
            outputs=[Splat.Output(display_name="splat", tooltip="The loaded Gaussians (batch of 1).")],
        )

    @classmethod
    def execute(cls, ply_file, frame="auto") -> io.NodeOutput:
        from lgm_core.splat_io import load_splat_file

        path = files.input_file_path(ply_file)  # contained in its folder, or UnsafePathError
        if not os.path.isfile(path):
            raise FileNotFoundError(f"splat file not found: {ply_file} (looked in the input folder)")
        return io.NodeOutput(gaussians_to_splat(load_splat_file(path, frame=frame)))

    @classmethod
    def fingerprint_inputs(cls, ply_file, frame="auto"):
        try:
            path = files.input_file_path(ply_file)
        except ValueError:  # validate_inputs reports it; never stat a path outside the folders
            return ply_file
        return (os.path.getmtime(path) if os.path.isfile(path) else ply_file, frame)

    @classmethod
    def validate_inputs(cls, ply_file, frame="auto"):
        if not isinstance(ply_file, str):
            return f"splat_file must be a file name, got {type(ply_file).__name__}"
        if frame not in LOAD_FRAMES:
            return check_choice("frame", frame, LOAD_FRAMES)
        base = split_annotated_name(ply_file)[0]
        if not base.lower().endswith(SPLAT_EXTENSIONS):
            return f"not a splat file ({', '.join(SPLAT_EXTENSIONS)}): {ply_file}"
        try:
            path = files.input_file_path(ply_file)
        except ValueError as exc:
            return f"splat_file: {exc}"
        if not os.path.isfile(path):
            return f"splat file not found: {ply_file} (looked in the {split_annotated_name(ply_file)[1]} folder)"
        return True
