"""The views hand-off type: 4 posed views per object, in LGM order, between the multi-view stage and
reconstruction. Plain data: no I/O, no models.

Conventions
-----------
* ``images``: ``[B, 4, 3, H, W]`` float32 RGB in [0, 1] on white (alpha is composited when the views
  are built from RGBA), square, at least :data:`MIN_VIEW_SIZE` pixels, B objects.
* **LGM view order**: view ``j`` is seen from azimuth ``90 * j``: front (camera on +z), then the
  object turned by 90, 180 and 270 degrees (cameras on +x, -z, -x). Multi-view diffusion produces its
  frames in another order; :data:`LGM_VIEW_ORDER` (known only here) maps one to the other.
* ``cameras``: camera-to-world poses ``[4, 4, 4]`` (shared by every object) or ``[B, 4, 4, 4]``,
  OpenGL convention, LGM world frame (+y up, front +z; see :mod:`lgm_core.cameras`), or None for LGM's
  default orbit at ``elevation`` (radius of the model that reconstructs, 1.5 for the official ones).
* ``elevation``: degrees, positive = cameras above the object.

A :class:`Views` is validated once, when it is built (count, size, range, finite values, camera
shapes); everything downstream trusts it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["Views", "ViewsError", "as_views", "LGM_VIEW_ORDER", "NUM_VIEWS", "MIN_VIEW_SIZE", "to_lgm_order"]

NUM_VIEWS = 4
LGM_VIEW_ORDER = (1, 2, 3, 0)
"""LGM view ``j`` is multi-view diffusion frame ``LGM_VIEW_ORDER[j]``: MVDream/ImageDream frame ``k``
sits at azimuth ``90 * k - 90`` in LGM's frame (see :mod:`lgm_core.mvdiffusion.cameras`)."""
MIN_VIEW_SIZE = 32
"""Smaller views carry no usable detail (LGM upscales them to 256 x 256): they are refused."""
RANGE_TOLERANCE = 1e-3
"""Pixel values may leave [0, 1] by this much (resampling overshoot) before they are refused."""
WHITE = (1.0, 1.0, 1.0)


class ViewsError(ValueError):
    """Views that LGM cannot reconstruct from. ``problem`` names what is wrong, so callers can add
    their own hint: "layout", "count", "size", "dtype", "values" or "cameras"."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


def to_lgm_order(frames, dim: int = 0):
    """The 4 frames of one object along ``dim`` (torch or numpy), from multi-view diffusion order to LGM
    order."""
    if isinstance(frames, torch.Tensor):
        return frames.index_select(dim, torch.tensor(LGM_VIEW_ORDER, device=frames.device))
    return np.take(frames, LGM_VIEW_ORDER, axis=dim)


@dataclass(frozen=True)
class Views:
    """4 views per object in LGM order, with their cameras (layouts: module docstring).

    ``Views(images, cameras=None, elevation=0.0)`` takes channels-first images ``[B, 4, 3, H, W]`` (or
    ``[4, 3, H, W]`` for one object); :meth:`from_channels_last` takes ComfyUI/PIL-style images and
    :meth:`from_multiview` the frames of a multi-view diffusion model.
    """

    images: torch.Tensor
    cameras: Optional[torch.Tensor] = None
    elevation: float = 0.0

    def __post_init__(self) -> None:
        images, cameras = self.images, self.cameras
        if not torch.is_tensor(images):
            raise TypeError(f"images must be a torch.Tensor [B, 4, 3, H, W], got {type(images).__name__}")
        if images.dim() == 4:
            images = images[None]
        if images.dim() != 5 or images.shape[2] != 3:
            raise ViewsError(f"images must be [B, 4, 3, H, W] RGB, got {list(images.shape)}", "layout")
        if images.shape[1] != NUM_VIEWS:
            raise ViewsError(f"LGM needs exactly 4 views per object (front, then turned by 90, 180 and 270 "
                             f"degrees), got {images.shape[1]}", "count")
        h, w = images.shape[-2:]
        if h != w:
            raise ViewsError(f"views must be square, got {w}x{h}", "size")
        if h < MIN_VIEW_SIZE:
            raise ViewsError(f"views of {w}x{h} pixels are too small to reconstruct from (at least "
                             f"{MIN_VIEW_SIZE}x{MIN_VIEW_SIZE}; LGM works at 256x256)", "size")
        if not images.is_floating_point():
            raise ViewsError(f"images must be floating point in [0, 1], got dtype {images.dtype}", "dtype")
        images = images.float()
        lo, hi = torch.aminmax(images)
        lo, hi = float(lo), float(hi)  # one device sync for both checks
        if not math.isfinite(lo + hi):
            raise ViewsError("the views contain NaN/Inf pixel values", "values")
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise ViewsError(f"view pixels must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]", "values")
        if cameras is not None:
            cameras = torch.as_tensor(cameras, dtype=torch.float32)
            if cameras.shape not in ((NUM_VIEWS, 4, 4), (images.shape[0], NUM_VIEWS, 4, 4)):
                raise ViewsError(f"cameras must be the camera-to-world poses of the 4 views, [4, 4, 4] or "
                                 f"[B, 4, 4, 4]; got {list(cameras.shape)}", "cameras")
            if not bool(torch.isfinite(cameras).all()):
                raise ViewsError("the camera poses contain NaN/Inf values", "cameras")
        if not math.isfinite(float(self.elevation)):
            raise ViewsError(f"elevation must be a finite angle in degrees, got {self.elevation}", "cameras")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "cameras", cameras)
        object.__setattr__(self, "elevation", float(self.elevation))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_channels_last(cls, images, cameras: Optional[torch.Tensor] = None, elevation: float = 0.0,
                           background: Sequence[float] = WHITE) -> "Views":
        """Channels-last views ``[4, H, W, 3|4]`` or ``[B, 4, H, W, 3|4]`` (ComfyUI IMAGE layout; float
        in [0, 1] or uint8) in LGM order; RGBA is composited over ``background``."""
        if not torch.is_tensor(images):
            raise TypeError(f"views must be a torch.Tensor [4, H, W, 3|4], got {type(images).__name__}")
        if images.dim() == 4:
            images = images[None]
        if images.dim() != 5 or images.shape[-1] not in (3, 4):
            raise ViewsError(f"views must be channels-last [4, H, W, 3|4] or [B, 4, H, W, 3|4], got "
                             f"{list(images.shape)}", "layout")
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images
        if images.shape[-1] == 4:
            from .preprocess import composite

            images = composite(images[..., :3].float(), images[..., 3].float(), background)
        return cls(images.permute(0, 1, 4, 2, 3), cameras, elevation)

    @classmethod
    def from_multiview(cls, frames, elevation: float = 0.0) -> "Views":
        """Multi-view diffusion frames ``[n*4, H, W, 3]`` (numpy or torch, float in [0, 1], object-major,
        in the model's camera order, as :class:`~lgm_core.mvdiffusion.MultiViewPipeline` returns them) ->
        views in LGM order with LGM's default cameras at ``elevation`` (the views' poses)."""
        from .cameras import default_input_cameras

        x = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frames))
        if x.dim() != 4 or x.shape[0] % NUM_VIEWS or x.shape[-1] != 3:
            raise ViewsError(f"expected multi-view frames [n*4, H, W, 3], got {list(x.shape)}", "layout")
        x = to_lgm_order(x.reshape(-1, NUM_VIEWS, *x.shape[1:]), dim=1)
        return cls(x.permute(0, 1, 4, 2, 3).float(), default_input_cameras(float(elevation)), elevation)

    # ------------------------------------------------------------------ views of the data
    @property
    def num_objects(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        """Side of the square views in pixels."""
        return self.images.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.num_objects

    def __getitem__(self, index: int) -> "Views":
        """The views of object ``index`` (a Views with B = 1)."""
        i = range(self.num_objects)[index]
        cams = self.cameras
        if cams is not None and cams.dim() == 4:
            cams = cams[i]
        return dataclasses.replace(self, images=self.images[i:i + 1], cameras=cams)

    def to(self, device) -> "Views":
        cams = None if self.cameras is None else self.cameras.to(device)
        return dataclasses.replace(self, images=self.images.to(device), cameras=cams)

    def channels_last(self) -> torch.Tensor:
        """Images as ``[B, 4, H, W, 3]`` (ComfyUI's IMAGE layout per object)."""
        return self.images.permute(0, 1, 3, 4, 2).contiguous()

    def grid(self, index: int = 0) -> torch.Tensor:
        """2x2 preview ``[2H, 2W, 3]`` of object ``index``: LGM views 0..3 in reading order (the layout
        LGM's app saves; :func:`lgm_core.preprocess.split_grid` reads it back)."""
        from .preprocess import make_grid

        return make_grid(self.channels_last()[index])

    def camera_poses(self, radius: float) -> torch.Tensor:
        """``cameras``, or LGM's default orbit at ``elevation`` and ``radius`` when there are none."""
        if self.cameras is not None:
            return self.cameras
        from .cameras import default_input_cameras

        return default_input_cameras(self.elevation, radius)


def as_views(images, cameras: Optional[torch.Tensor] = None, elevation: float = 0.0) -> Views:
    """``images`` when it is a :class:`Views` already (then ``cameras``/``elevation`` must be left
    out: they travel inside it), else ``Views(images, cameras, elevation)``."""
    if isinstance(images, Views):
        if cameras is not None or elevation != 0.0:
            raise TypeError("cameras and elevation travel inside the Views: pass Views(images, cameras, elevation)")
        return images
    return Views(images, cameras, elevation)
