"""Reading images as channels-last float tensors in [0, 1] (writing: :func:`lgm_core.video.write_image`)."""

from __future__ import annotations

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
