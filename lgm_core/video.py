"""Write rendered frames to video (.mp4) and animated images (.webp, .gif), and stills.

Frames: ``[T, H, W, 3]`` (or ``[T, H, W, 4]``: alpha is dropped for .mp4/.gif; kept by .webp/.png)
as a float tensor/array in [0, 1] (clamped, rounded to 8 bit) or uint8. ``.mp4`` is H.264
(yuv420p, plays everywhere) encoded by the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships
(no system ffmpeg needed); odd sizes are padded by one edge pixel (yuv420p needs even sizes).
``.webp``/``.gif`` use Pillow. Every write is atomic: a temporary file in the target folder is
renamed over the destination once complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from .fileio import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".webp", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")

PathLike = Union[str, os.PathLike]


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


def _check_frames(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., None].repeat(3, axis=-1) if arr.shape[-1] not in (3, 4) else arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"frames must be [T, H, W, 3|4] (channels last), got shape {list(arr.shape)}")
    if arr.shape[-1] == 1:
        arr = arr.repeat(3, axis=-1)
    if arr.shape[0] == 0:
        raise ValueError("no frames to write")
    return arr


def write_video(frames, path: PathLike, *, fps: float = 30.0, quality: int = 8, loop: int = 0) -> Path:
    """Write ``frames`` [T,H,W,3|4] to ``path`` (.mp4, .webp or .gif by extension); returns the path.

    ``quality`` 0-10 (mp4: ffmpeg quality scale, 10 = best; webp: maps to 0-100, 10 = lossless).
    ``loop`` = number of repeats for animated images (0 = forever).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"unsupported video format {ext!r}: use one of {', '.join(VIDEO_EXTENSIONS)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    arr = _check_frames(to_uint8(frames))
    with atomic_path(path) as tmp:
        if ext == ".mp4":
            _write_mp4(arr[..., :3], tmp, fps, quality)
        else:
            _write_animated(arr, tmp, ext, fps, quality, loop)
    return path


def _write_mp4(arr: np.ndarray, path: Path, fps: float, quality: int) -> None:
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - listed in requirements
        raise RuntimeError("writing .mp4 needs the 'imageio-ffmpeg' package (pip install imageio-ffmpeg)") from exc
    t, h, w, _ = arr.shape
    ph, pw = h % 2, w % 2
    if ph or pw:  # yuv420p needs even sizes: repeat the last row/column
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    h, w = arr.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=float(fps), codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=float(np.clip(quality, 0, 10)), macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    writer.send(None)  # start ffmpeg
    try:
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _write_animated(arr: np.ndarray, path: Path, ext: str, fps: float, quality: int, loop: int) -> None:
    from PIL import Image

    duration = max(1, int(round(1000.0 / fps)))
    if ext == ".gif":
        images = [Image.fromarray(f[..., :3]) for f in arr]
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration,
                       loop=loop, disposal=2, optimize=False)
    else:
        mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
        images = [Image.fromarray(f, mode=mode) for f in arr]
        q = int(np.clip(quality, 0, 10))
        images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=duration,
                       loop=loop, lossless=(q >= 10), quality=q * 10, method=4)


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


def read_video(path: PathLike) -> np.ndarray:
    """Read all frames of a video or animated image as uint8 [T, H, W, 3] (for tests and checks)."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path))
        meta = reader.__next__()
        w, h = meta["size"]
        frames = [np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3) for f in reader]
        return np.stack(frames)
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
