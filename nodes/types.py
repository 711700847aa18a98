"""Socket types of the pack and conversions between ComfyUI values and ``lgm_core`` objects.

Socket types:
- ``LGM_MODEL``: a ``ManagedModel`` holding an ``lgm_core.LGM``.
- ``LGM_MV_PIPELINE``: a ``ManagedModel`` holding an ``lgm_core.mvdiffusion.MultiViewPipeline``.
- ``LGM_CAMERAS``: an ``lgm_core.cameras.Cameras`` (OpenGL camera-to-world poses, LGM world frame:
  +y up, object front facing +z; elevation positive = camera above).
- ``SPLAT``: core's SPLAT class when the running ComfyUI has one, else an equivalent object with the
  same attributes, in core's 3DGS frame (see ``bridge``, which converts it to and from ``Gaussians``).

Image layouts: ComfyUI IMAGE is [B,H,W,3] float in [0,1]; LGM wants views [1,4,3,H,W].
"""

from __future__ import annotations

import torch

from .bridge import SplatSocket
from .comfy_api import io

LGMModel = io.Custom("LGM_MODEL")
MultiViewPipelineType = io.Custom("LGM_MV_PIPELINE")
CamerasType = io.Custom("LGM_CAMERAS")
Splat = SplatSocket

CATEGORY = "LGM"
PRECISIONS = ["auto", "fp16", "bf16", "fp32"]

def image_to_views(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE batch of 4 [4,H,W,C] -> LGM views [1,4,3,H,W] (alpha composited on white)."""
    from lgm_core.preprocess import views_to_lgm

    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"expected an IMAGE batch [B,H,W,C], got {getattr(images, 'shape', type(images))}")
    if images.shape[0] != 4:
        raise ValueError(
            f"LGM needs exactly 4 views in one IMAGE batch (front, then turned by 90, 180 and 270 degrees); "
            f"got a batch of {images.shape[0]}. Use a multi-view node, or batch 4 images with 'Batch Images'.")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"LGM views must be square, got {images.shape[2]}x{images.shape[1]}; "
                         "crop or pad them first (e.g. with LGM Prepare Image)")
    return views_to_lgm(images.float())


def views_to_image(views: torch.Tensor) -> torch.Tensor:
    """[V,3,H,W] or [V,H,W,3] float in [0,1] -> ComfyUI IMAGE [V,H,W,3] float32 on the CPU."""
    if views.dim() == 5:
        views = views.reshape(-1, *views.shape[2:])
    if views.shape[1] == 3 and views.shape[-1] != 3:
        views = views.permute(0, 2, 3, 1)
    return views.detach().float().clamp(0, 1).cpu().contiguous()


def check_choice(name: str, value, options) -> str | None:
    """An error message when a combo value is not one of ``options`` (ComfyUI 0.3.x does not check V3
    combos itself), else None."""
    options = list(options)
    if value in options:
        return None
    shown = options if len(options) <= 12 else options[:12] + ["..."]
    return f"{name}: {value!r} is not one of {shown}"


def first_error(*messages) -> bool | str:
    """``validate_inputs`` result: the first non-empty message, or True."""
    for m in messages:
        if m:
            return m
    return True
