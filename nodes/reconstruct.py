"""LGM Reconstruct: 4 views (+ cameras) -> 3D Gaussians (SPLAT)."""

from __future__ import annotations

import torch

from . import devices
from .bridge import gaussians_to_splat
from .comfy_api import io
from .progress import check_interrupted
from .types import CATEGORY, CamerasType, LGMModel, Splat, image_to_views


class LGMReconstruct(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMReconstruct",
            display_name="LGM Reconstruct",
            category=CATEGORY,
            description="LGM: 4 views of an object on white -> 3D Gaussian splats (65,536 with the official model). "
                        "Views in order front, then turned by 90, 180, 270 degrees; square, any size.",
            inputs=[
                LGMModel.Input("lgm_model", tooltip="The LGM model (LGM Model Loader)."),
                io.Image.Input("views", tooltip="Exactly 4 square views [4,H,W,3] (front, 90, 180, 270 degrees), "
                                                "white background."),
                CamerasType.Input("cameras", optional=True,
                                  tooltip="Poses of the 4 views (from a multi-view node). If absent: LGM's default "
                                          "orbit at the elevation below."),
                io.Float.Input("elevation", default=0.0, min=-60.0, max=60.0, step=1.0,
                               tooltip="Elevation of the views in degrees (positive = from above); used only when no "
                                       "cameras are connected."),
            ],
            outputs=[Splat.Output(display_name="splat", tooltip="3D Gaussians (SPLAT: positions, scales, rotations, "
                                                                "opacities, sh, counts), +y up, front facing +z.")],
        )

    @classmethod
    def execute(cls, lgm_model, views, elevation, cameras=None) -> io.NodeOutput:
        images = image_to_views(views)  # validates the batch of 4 with a clear message
        c2w = None
        if cameras is not None:
            c2w = cameras.c2w
            if c2w.shape[0] != 4:
                raise ValueError(f"LGM Reconstruct needs the 4 cameras of its 4 views, got {c2w.shape[0]} cameras")
        model = lgm_model.get()
        check_interrupted()
        device = lgm_model.device
        with torch.inference_mode():
            gaussians = model.reconstruct(images.to(device), None if c2w is None else c2w.to(device),
                                          elevation=float(elevation))
        return io.NodeOutput(gaussians_to_splat(gaussians.to(devices.intermediate_device())))
