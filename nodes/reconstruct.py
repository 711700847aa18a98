"""LGM Reconstruct: 4 views (+ cameras) -> 3D Gaussians (SPLAT)."""

from __future__ import annotations

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
        from lgm_core.pipelines import views_to_gaussians

        lgm_views = image_to_views(views, cameras, float(elevation))  # validated once, with a clear message
        model = lgm_model.get()
        check_interrupted()
        gaussians = views_to_gaussians(model, lgm_views.to(lgm_model.device))
        return io.NodeOutput(gaussians_to_splat(gaussians.to(devices.intermediate_device())))
