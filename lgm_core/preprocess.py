"""Image preparation for LGM / ImageDream: recentre an object, composite it, split view grids.

Images here are **channels-last float tensors in [0, 1]**: ``[H, W, 3]`` (RGB) or ``[H, W, 4]``
(RGBA), the layout ComfyUI's IMAGE uses per item. Masks are ``[H, W]`` in [0, 1], 1 = object.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

WHITE = (1.0, 1.0, 1.0)


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(image):
        raise TypeError(f"image must be a torch.Tensor [H, W, 3|4], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be channels-last [H, W, 3] or [H, W, 4], got {list(image.shape)}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image is too small: {image.shape[1]}x{image.shape[0]}")
    if not image.is_floating_point():
        image = image.float() / 255.0
    return image.float()


def composite(rgb: torch.Tensor, alpha: torch.Tensor, background: Sequence[float] = WHITE) -> torch.Tensor:
    """rgb [..., 3] over ``background`` with alpha [..., 1] or [...]: rgb * a + bg * (1 - a)."""
    if alpha.dim() == rgb.dim() - 1:
        alpha = alpha[..., None]
    bg = torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    return rgb * alpha + bg * (1 - alpha)


def mask_bbox(mask: torch.Tensor) -> Tuple[int, int, int, int]:
    """Bounding box (row0, row1, col0, col1) of ``mask > 0``, end-exclusive as in kiui's recenter
    (which leaves out the last row/column itself; we follow it for faithfulness)."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise ValueError("the mask is empty: there is no object to recentre (check the alpha channel / mask input)")
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[H, W, C] -> [h, w, C]: area averaging when shrinking, bilinear when enlarging."""
    x = img.permute(2, 0, 1)[None]
    if h <= img.shape[0] and w <= img.shape[1]:
        x = F.interpolate(x, size=(h, w), mode="area")
    else:
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0)


def recenter(rgba: torch.Tensor, mask: torch.Tensor, border_ratio: float = 0.2) -> torch.Tensor:
    """Crop ``rgba`` [H, W, 4] to the mask's box and paste it centred on a transparent square canvas
    of side max(H, W), scaled so its longer side is int((1 - border_ratio) * side).
    Returns [side, side, 4] (docs/conventions.md#image-preprocessing)."""
    if not 0.0 <= border_ratio < 1.0:
        raise ValueError(f"border_ratio must be in [0, 1), got {border_ratio}")
    h, w = rgba.shape[:2]
    side = max(h, w)
    r0, r1, c0, c1 = mask_bbox(mask > 0)
    crop_h, crop_w = max(r1 - r0, 1), max(c1 - c0, 1)
    desired = int(side * (1 - border_ratio))
    scale = desired / max(crop_h, crop_w)
    new_h, new_w = max(int(crop_h * scale), 1), max(int(crop_w * scale), 1)
    crop = rgba[r0:r0 + crop_h, c0:c0 + crop_w]
    canvas = torch.zeros(side, side, 4, dtype=rgba.dtype, device=rgba.device)
    top, left = (side - new_h) // 2, (side - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = _resize(crop, new_h, new_w)
    return canvas


def prepare_image(
    image: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    size: int = 256,
    border_ratio: float = 0.2,
    background: Sequence[float] = WHITE,
    recenter_object: bool = True,
) -> torch.Tensor:
    """Make an object photo ready for ImageDream/LGM: [H, W, 3|4] -> [size, size, 3] in [0, 1].

    The object mask comes from ``mask`` ([H, W], 1 = object) or else the image's alpha channel.
    With a mask: crop to the object's box, recentre on a square canvas leaving ``border_ratio`` of
    the side free (0.2 as the original), composite over ``background`` (white default), resize.
    Without any mask (plain RGB): pad to a square with ``background`` and resize.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.float32, device=image.device)
        if mask.dim() == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.shape != (h, w):
            raise ValueError(f"mask must be [H, W] = [{h}, {w}] like the image, got {list(mask.shape)}")
        alpha = mask.clamp(0, 1)
    elif image.shape[-1] == 4:
        alpha = image[..., 3]
    else:
        alpha = None
    if alpha is None:
        side = max(h, w)
        canvas = torch.empty(side, side, 3, dtype=image.dtype, device=image.device)
        canvas[:] = torch.as_tensor(background, dtype=image.dtype, device=image.device)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = image[..., :3]
        return _resize(canvas, size, size).clamp(0, 1)
    rgba = torch.cat([image[..., :3], alpha[..., None]], dim=-1)
    if recenter_object:
        rgba = recenter(rgba, alpha, border_ratio)
    rgba = _resize(rgba, size, size)
    return composite(rgba[..., :3], rgba[..., 3], background).clamp(0, 1)


def split_grid(image: torch.Tensor) -> torch.Tensor:
    """Split a 2x2 grid image [H, W, C] into 4 views [4, H/2, W/2, C] in reading order
    (top-left, top-right, bottom-left, bottom-right) — the layout LGM's app saves (its grid holds
    the views in LGM order: front, 90, 180, 270)."""
    if image.dim() != 3:
        raise ValueError(f"grid image must be [H, W, C], got {list(image.shape)}")
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"a 2x2 grid needs even width and height, got {w}x{h}")
    hh, hw = h // 2, w // 2
    return torch.stack([image[:hh, :hw], image[:hh, hw:], image[hh:, :hw], image[hh:, hw:]])


def make_grid(views: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_grid`: [4, h, w, C] -> [2h, 2w, C]."""
    if views.dim() != 4 or views.shape[0] != 4:
        raise ValueError(f"make_grid needs 4 views [4, h, w, C], got {list(views.shape)}")
    top = torch.cat([views[0], views[1]], dim=1)
    bottom = torch.cat([views[2], views[3]], dim=1)
    return torch.cat([top, bottom], dim=0)

