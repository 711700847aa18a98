"""Camera paths and splat rendering (images, alpha masks, depth) for ComfyUI's image/video nodes."""

from __future__ import annotations

import torch

from . import devices
from .bridge import splat_to_gaussians
from .comfy_api import io
from .progress import Progress, check_interrupted
from .types import CATEGORY, CamerasType, Splat, check_choice, first_error


DEPTH_MODES = ["normalized", "inverse", "metric"]


class LGMOrbitCameras(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMOrbitCameras",
            display_name="LGM Orbit Cameras",
            category=CATEGORY,
            description="Cameras on a circle around the object looking at its centre: a turntable for videos, or "
                        "LGM's 4 input views. LGM frame: +y up, azimuth 0 looks at the front (+z), 90 from +x.",
            inputs=[
                io.Int.Input("num_frames", default=36, min=1, max=720,
                             tooltip="Number of cameras, evenly spaced over one full turn."),
                io.Float.Input("elevation", default=0.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="Degrees; positive = cameras above the object."),
                io.Float.Input("radius", default=1.5, min=0.1, max=100.0, step=0.05,
                               tooltip="Distance from the object centre (LGM objects fit in [-1,1]^3; its cameras "
                                       "use 1.5)."),
                io.Float.Input("fovy", default=49.1, min=1.0, max=170.0, step=0.1,
                               tooltip="Vertical field of view in degrees (49.1 as LGM)."),
                io.Int.Input("width", default=512, min=16, max=4096, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=16, max=4096, step=8, tooltip="Image height in pixels."),
                io.Float.Input("start_azimuth", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Azimuth of the first camera in degrees (0 = front)."),
            ],
            outputs=[CamerasType.Output(display_name="cameras", tooltip="The camera set (LGM_CAMERAS).")],
        )

    @classmethod
    def execute(cls, num_frames, elevation, radius, fovy, width, height, start_azimuth) -> io.NodeOutput:
        from lgm_core.cameras import Cameras

        cams = Cameras.turntable(int(num_frames), float(elevation), float(radius), float(fovy),
                                 (int(width), int(height)), start_azimuth=float(start_azimuth))
        return io.NodeOutput(cams)


class LGMRenderSplat(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LGMRenderSplat",
            display_name="LGM Render Splat",
            category=CATEGORY,
            description="Renders Gaussian splats from every camera: colour IMAGE, alpha MASK and a depth IMAGE, one "
                        "frame per camera (feed them to Save Animated WEBP, video nodes or Save Image). Uses gsplat on "
                        "CUDA when it works, else the built-in PyTorch renderer.",
            inputs=[
                Splat.Input("splat", tooltip="Gaussians (SPLAT) from LGM Reconstruct, LGM Load Splat or core nodes."),
                CamerasType.Input("cameras", tooltip="Cameras from LGM Orbit Cameras or a multi-view node."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Background grey level (1 = white)."),
                io.Float.Input("scale_modifier", default=1.0, min=0.01, max=10.0, step=0.01,
                               tooltip="Multiplies every Gaussian's size (1 = as reconstructed)."),
                io.Combo.Input("depth_mode", options=DEPTH_MODES, default="normalized",
                               tooltip="Depth image: normalized = near white/far dark over the object per frame; "
                                       "inverse = 1/depth normalised the same way; metric = camera-space depth in "
                                       "world units (not clipped to [0,1]). Background is 0."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="Rendered colours [frames,H,W,3]."),
                io.Mask.Output(display_name="alpha", tooltip="Accumulated opacity [frames,H,W] (1 = object)."),
                io.Image.Output(display_name="depth", tooltip="Depth as a grey IMAGE [frames,H,W,3] (see depth_mode)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, depth_mode):
        return first_error(check_choice("depth_mode", depth_mode, DEPTH_MODES))

    @classmethod
    def execute(cls, splat, cameras, background, scale_modifier, depth_mode) -> io.NodeOutput:
        from lgm_core.render import render

        device = devices.torch_device()
        gaussians = splat_to_gaussians(splat).to(device)
        cams = cameras.to(device)
        n = len(cams)
        chunk = max(1, min(n, 8))
        progress = Progress(n)
        images, alphas, depths = [], [], []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                check_interrupted()
                out = render(gaussians, cams[start:start + chunk], background=(float(background),) * 3,
                             scale_modifier=float(scale_modifier))
                # [B,V,...] -> frames, batch-major
                images.append(out.image.flatten(0, 1))
                alphas.append(out.alpha.flatten(0, 1)[..., 0])
                depths.append(out.depth.flatten(0, 1)[..., 0])
                progress.update(min(start + chunk, n))
            image = torch.cat(images)
            alpha = torch.cat(alphas)
            depth = _depth_image(torch.cat(depths), alpha, depth_mode)
        out_dev = devices.intermediate_device()
        return io.NodeOutput(image.to(out_dev), alpha.to(out_dev), depth.to(out_dev))


def _depth_image(depth: torch.Tensor, alpha: torch.Tensor, mode: str) -> torch.Tensor:
    """Depth [F,H,W] (0 where empty) -> grey IMAGE [F,H,W,3]; see the depth_mode tooltip."""
    valid = alpha > 0.5
    if mode == "metric":
        d = torch.where(valid, depth, torch.zeros_like(depth))
    else:
        d = torch.where(valid, 1.0 / depth.clamp_min(1e-6) if mode == "inverse" else depth, torch.nan)
        flat = d.flatten(1)
        lo = torch.nan_to_num(flat.nan_to_num(float("inf")).amin(1), posinf=0.0)
        hi = torch.nan_to_num(flat.nan_to_num(float("-inf")).amax(1), neginf=1.0)
        span = (hi - lo).clamp_min(1e-6)[:, None, None]
        t = (d - lo[:, None, None]) / span
        if mode == "normalized":
            t = 1.0 - t  # near = bright
        d = torch.nan_to_num(t, nan=0.0).clamp(0, 1) * valid
    return d[..., None].expand(*d.shape, 3).contiguous()
