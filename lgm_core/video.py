"""Write rendered frames to video (.mp4) and animated images (.webp, .gif); stills are
:func:`lgm_core.image_io.write_image`.

Frames: ``[T, H, W, 3]`` (or ``[T, H, W, 4]``: alpha is dropped for .mp4/.gif; kept by .webp/.png)
as a float tensor/array in [0, 1] (clamped, rounded to 8 bit) or uint8. ``.mp4`` is H.264
(yuv420p, plays everywhere) encoded by the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships
(no system ffmpeg needed); odd sizes are padded by one edge pixel (yuv420p needs even sizes).
``.webp``/``.gif`` use Pillow. Every write is atomic: a temporary file in the target folder is
renamed over the destination once complete; an .mp4 only when ffmpeg exited 0 and the file is a
complete MP4 (:func:`check_mp4`), so a full disk raises :class:`VideoWriteError` and leaves the old
file untouched. On Linux ffmpeg is killed when the writing process dies.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Union

import numpy as np

from .fileio import atomic_path
from .image_io import to_uint8

VIDEO_EXTENSIONS = (".mp4", ".webp", ".gif")

PathLike = Union[str, os.PathLike]


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
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    arr = _check_frames(to_uint8(frames))
    with atomic_path(path) as tmp:
        if ext == ".mp4":
            _write_mp4(arr[..., :3], tmp, fps, quality, path)
        else:
            _write_animated(arr, tmp, ext, fps, quality, loop)
    return path


def _write_mp4(arr: np.ndarray, path: Path, fps: float, quality: int, target: Path) -> None:
    """Encode with the imageio-ffmpeg binary; raises unless ffmpeg exits 0 and the file is a
    complete MP4 (see :func:`check_mp4`). ``target`` is the final path, named in errors."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:  # pragma: no cover - listed in requirements
        raise RuntimeError("writing .mp4 needs the 'imageio-ffmpeg' package (pip install imageio-ffmpeg)") from exc
    t, h, w, _ = arr.shape
    ph, pw = h % 2, w % 2
    if ph or pw:  # yuv420p needs even sizes: repeat the last row/column
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    h, w = arr.shape[1:3]
    crf = int((1.0 - float(np.clip(quality, 0, 10)) / 10.0) * 51)  # imageio-ffmpeg's mapping
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-v", "error", "-xerror",
           "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w}x{h}", "-pix_fmt", "rgb24", "-r", f"{float(fps):.6g}",
           "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf),
           "-movflags", "+faststart", "-f", "mp4", str(path)]
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as errlog:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errlog,
                                preexec_fn=_die_with_parent_hook())
        broken = None
        try:
            for frame in arr:
                proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError) as exc:  # ffmpeg quit early; its log says why
            broken = exc
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass
        code = proc.wait()
        errlog.seek(0)
        log_text = errlog.read().decode("utf-8", "replace").strip()
    if code != 0 or broken is not None:
        reason = _ffmpeg_reason(log_text) or (str(broken) if broken else f"exit status {code}")
        raise VideoWriteError(f"cannot write {target}: ffmpeg failed ({reason})")
    check_mp4(path, target)


def _die_with_parent_hook():
    """Linux: a ``preexec_fn`` that makes the child get SIGKILL when the writing thread's process
    dies (so no orphaned ffmpeg keeps writing after ``kill -9``); None elsewhere. prctl is looked
    up here, in the parent, so the forked child only makes one libc call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover
        return None

    def hook():  # pragma: no cover - runs in the forked child
        prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL

    return hook


def _ffmpeg_reason(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "No space left" in ln or "File too large" in ln or "Permission denied" in ln:
            return ln.split("] ", 1)[-1]
    return lines[-1].split("] ", 1)[-1] if lines else ""


class VideoWriteError(OSError):
    """A video that could not be written completely (the old file, if any, is untouched)."""


def check_mp4(path: PathLike, name: PathLike = None) -> None:
    """Raise :class:`VideoWriteError` unless ``path`` is a structurally complete MP4: top-level
    boxes that tile the file exactly, with ``ftyp``, ``moov`` and ``mdat`` present (a file cut
    short on a full disk lacks its ``moov`` index and plays nowhere)."""
    name = path if name is None else name
    size = os.path.getsize(path)
    seen = set()
    pos = 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                raise VideoWriteError(f"cannot write {name}: incomplete MP4 (a box header is cut at byte {pos})")
            box_size = int.from_bytes(head[:4], "big")
            kind = head[4:8]
            if box_size == 1 and len(head) == 16:
                box_size = int.from_bytes(head[8:16], "big")
            elif box_size == 0:
                box_size = size - pos
            if box_size < 8 or pos + box_size > size:
                raise VideoWriteError(f"cannot write {name}: incomplete MP4 (box {kind!r} at byte {pos} runs past "
                                      f"the end of the {size}-byte file)")
            seen.add(kind)
            pos += box_size
    missing = [k.decode() for k in (b"ftyp", b"moov", b"mdat") if k not in seen]
    if missing:
        raise VideoWriteError(f"cannot write {name}: incomplete MP4 (no {', '.join(missing)} box)")


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
