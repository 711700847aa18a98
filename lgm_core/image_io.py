"""Reading and writing images as channels-last float tensors in [0, 1]."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]


def load_image(path: PathLike) -> torch.Tensor:
    """Read an image file -> [H, W, 3] (RGB) or [H, W, 4] (RGBA, if the file has alpha) float32 in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            im = im.convert("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(arr.copy())


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, C] float in [0, 1] -> uint8 array (rounded)."""
    return (image.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_image(image: torch.Tensor, path: PathLike) -> Path:
    """Write [H, W, 3|4] float in [0, 1] as PNG/JPEG/WebP (by extension), atomically."""
    from PIL import Image

    from .fileio import atomic_write_bytes

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported image extension {path.suffix!r} (use .png, .jpg or .webp)")
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return path
