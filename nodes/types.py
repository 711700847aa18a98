"""Socket types of the pack and conversions between ComfyUI values and ``lgm_core`` objects.

Socket types:
- ``LGM_MODEL``: a ``model_management.ManagedModel`` holding an ``lgm_core.LGM``.
- ``LGM_MV_PIPELINE``: a ``model_management.ManagedModel`` holding an ``lgm_core.mvdiffusion.MultiViewPipeline``.
- ``LGM_CAMERAS``: an ``lgm_core.cameras.Cameras`` (OpenGL camera-to-world poses, LGM world frame:
  +y up, object front facing +z; elevation positive = camera above).
- ``SPLAT``: core's SPLAT class when the running ComfyUI has one, else an equivalent object with the
  same attributes, in core's 3DGS frame (see ``bridge``, which converts it to and from ``Gaussians``).

Image layouts: ComfyUI IMAGE is [B,H,W,3] float in [0,1]; LGM takes ``lgm_core.views.Views`` (4 views per
object, channels-first, LGM order) — ``image_to_views`` / ``views_to_image`` convert.
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

_VIEWS_HINTS = {
    "count": " The IMAGE is a batch of {n}: use a multi-view node, or batch 4 images with 'Batch Images'.",
    "size": " Crop or pad them first (e.g. with LGM Prepare Image).",
}


def image_to_views(images: torch.Tensor, cameras=None, elevation: float = 0.0):
    """ComfyUI IMAGE batch of 4 [4,H,W,C] in LGM order (+ optional ``Cameras`` of the 4 views) ->
    ``lgm_core.views.Views`` (alpha composited on white; validated there, with a ComfyUI hint added).
    Float images are clamped to IMAGE's [0, 1] first: resampling nodes (bicubic) overshoot it slightly."""
    from lgm_core.views import Views, ViewsError

    if not torch.is_tensor(images) or images.dim() != 4:
        raise ValueError(f"expected an IMAGE batch [B,H,W,C], got {getattr(images, 'shape', type(images))}")
    if images.is_floating_point():
        images = images.clamp(0, 1)  # NaN stays NaN (refused by Views)
    try:
        return Views.from_channels_last(images, None if cameras is None else cameras.c2w, elevation)
    except ViewsError as exc:
        raise ValueError(f"{exc}.{_VIEWS_HINTS.get(exc.problem, '').format(n=images.shape[0])}") from None


def views_to_image(views) -> torch.Tensor:
    """The first object of ``lgm_core.views.Views`` -> ComfyUI IMAGE [4,H,W,3] float32 on the CPU."""
    return views.channels_last()[0].detach().float().clamp(0, 1).cpu().contiguous()


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
