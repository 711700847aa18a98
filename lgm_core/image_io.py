"""Still images: :func:`load_image` reads them as channels-last float tensors in [0, 1];
:func:`write_image` writes one frame (float in [0, 1] or uint8) as .png/.jpg/.webp, atomically.

Every pixel format Pillow decodes is mapped to [0, 1] by its real range (docs/robustness.md):
8-bit modes (L, RGB, RGBA, P, LA, CMYK, ...) by 255; 16-bit grey (``I;16*``, and ``I`` images
whose values fit 0..65535, which is how Pillow opens 16-bit PNGs) by 65535; 32-bit float (``F``)
as it is when its values lie in [0, 1]. Formats without an unambiguous [0, 1] meaning (integer
images beyond 16 bits, float images outside [0, 1] or with NaN) are refused with a ``ValueError``
rather than decoded wrongly. Images are size-checked from the header before decoding: beyond
:data:`MAX_PIXELS` they are refused; beyond ``max_side`` they are downscaled (in 8-bit, before the
float conversion) with a note in the log, so memory stays a small multiple of the 8-bit image.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

from .fileio import atomic_path

PathLike = Union[str, os.PathLike]

log = logging.getLogger("lgm_core")

MAX_PIXELS = 178_000_000
"""Images with more pixels than this (about 13,300 x 13,300; Pillow's own hard limit is 179 M) are
refused before decoding."""
MAX_SIDE = 4096
"""Default ``max_side``: larger images are downscaled to this longest side on load (LGM works at 256)."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
"""Formats :func:`write_image` writes."""


def load_image(path: PathLike, *, max_side: int = MAX_SIDE) -> torch.Tensor:
    """Read an image file -> [H, W, 3] (RGB) or [H, W, 4] (RGBA, if the file has alpha) float32 in
    [0, 1]. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one line, naming the
    file) for unreadable, truncated, oversized or ambiguous images (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            # decode from memory: a damaged chunk length then cannot make a reader allocate beyond the file
            with Image.open(io.BytesIO(path.read_bytes())) as im:
                w, h = im.size
                if w < 1 or h < 1:
                    raise ValueError(f"cannot read image {path}: it has no pixels ({w}x{h})")
                if w * h > MAX_PIXELS:
                    raise ValueError(f"image {path} is {w}x{h} = {w * h / 1e6:.0f} MP, over the "
                                     f"{MAX_PIXELS / 1e6:.0f} MP limit: downscale it first")
                _reduce_draft(im, max_side)
                im.load()
                arr = _to_unit_float(im, path, max_side)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image {path} is over the {MAX_PIXELS / 1e6:.0f} MP limit ({exc}): downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from None
    return torch.from_numpy(np.ascontiguousarray(arr))


def _reduce_draft(im, max_side: int) -> None:
    """Let JPEG decode at a reduced scale when the image is much larger than ``max_side``."""
    if im.format == "JPEG" and max(im.size) > 2 * max_side:
        im.draft(im.mode, (max_side, max_side))


def _downscale(im, max_side: int, path):
    w, h = im.size
    if max(w, h) <= max_side:
        return im
    factor = -(-max(w, h) // max_side)  # ceil
    log.info("%s: %dx%d is larger than %d pixels: reduced by %d on load", path, w, h, max_side, factor)
    return im.reduce(factor)


def _to_unit_float(im, path, max_side: int) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if arr.ndim != 2:
            raise ValueError(f"cannot read image {path}: unsupported {mode} layout {list(arr.shape)}")
        if mode == "F":
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"cannot read image {path}: a float image with NaN/Inf pixels")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"cannot read image {path}: a float image with values in [{lo:.4g}, {hi:.4g}]; "
                                 "only [0, 1] float images have an unambiguous meaning (convert it to 8/16-bit)")
            grey = np.clip(arr, 0.0, 1.0)
        else:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > 65535:
                raise ValueError(f"cannot read image {path}: a 32-bit integer image with values in [{lo}, {hi}]; "
                                 "only 8- and 16-bit integer images are supported (convert it first)")
            grey = arr.astype(np.float32) / 65535.0
        grey = _downscale_array(grey, max_side, path)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    try:
        im = im.convert("RGBA" if has_alpha else "RGB")
    except ValueError as exc:
        raise ValueError(f"cannot read image {path}: cannot convert a {mode} image to RGB ({exc})") from None
    im = _downscale(im, max_side, path)
    return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0


def _downscale_array(arr: np.ndarray, max_side: int, path) -> np.ndarray:
    h, w = arr.shape[:2]
    if max(w, h) <= max_side:
        return arr
    factor = -(-max(w, h) // max_side)
    log.info("%s: %dx%d is larger than %d pixels: reduced by %d on load", path, w, h, max_side, factor)
    hh, ww = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.pad(arr, ((0, hh - h), (0, ww - w)), mode="edge")
    return padded.reshape(hh // factor, factor, ww // factor, factor).mean(axis=(1, 3)).astype(np.float32)


# ---------------------------------------------------------------------- writing
def to_uint8(frames) -> np.ndarray:
    """Frames (torch tensor or numpy, float in [0, 1] or uint8), channels last -> uint8 numpy."""
    if hasattr(frames, "detach"):
        frames = frames.detach().to("cpu")
        if frames.is_floating_point():
            frames = frames.float()
        frames = frames.numpy()
    arr = np.asarray(frames)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"frames must be float in [0, 1] or uint8, got dtype {arr.dtype}")
    return np.clip(np.rint(arr.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def write_image(frame, path: PathLike) -> Path:
    """Write one frame [H,W,3|4] (float in [0, 1] or uint8) as .png/.jpg/.webp, atomically."""
    from PIL import Image

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(f"unsupported image format {ext!r}: use one of {', '.join(IMAGE_EXTENSIONS)}")
    arr = to_uint8(frame)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"an image must be [H, W, 3|4], got shape {list(arr.shape)}")
    if ext in (".jpg", ".jpeg"):
        arr = arr[..., :3]
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[ext]
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format=fmt)
    return path
