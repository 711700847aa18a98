"""``python -m lgm_core render``: render a Gaussian .ply as a turntable video or as still views.

Examples::

    python -m lgm_core render object.ply --turntable 120 --size 512 -o spin.mp4
    python -m lgm_core render object.ply --views 0 90 180 270 --elevation 15 -o views.png
        (-> views_az000.png, views_az090.png, ...; a folder as -o gives view_az000.png, ...)
"""

from __future__ import annotations

from pathlib import Path

from . import CLIError, progress
from .common import HelpFormatter, StageProgress, add_device_argument, resolve_device

_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5)}


def register(sub) -> None:
    p = sub.add_parser(
        "render",
        help="render a Gaussian .ply: turntable video (.mp4/.webp/.gif) or still views",
        description=(
            "Render 3D Gaussians from orbit cameras around the origin (LGM frame: +y up, front faces +z). "
            "Azimuth 0 looks at the front (camera on +z), 90 from +x; positive elevation = camera above."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", help="Gaussian .ply (LGM's or any standard 3DGS .ply)")
    p.add_argument("-o", "--output", required=True,
                   help="video (.mp4/.webp/.gif) with --turntable; image (.png/.jpg/.webp) or folder with --views")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--turntable", type=int, metavar="FRAMES", help="render a full turn with this many frames")
    mode.add_argument("--views", type=float, nargs="+", metavar="AZIMUTH", help="render stills at these azimuths (deg)")
    p.add_argument("--size", type=int, default=512, help="image width and height in pixels")
    p.add_argument("--elevation", type=float, default=0.0, help="camera elevation in degrees (positive = above)")
    p.add_argument("--radius", type=float, default=1.5, help="camera distance from the origin")
    p.add_argument("--fovy", type=float, default=49.1, help="vertical field of view in degrees")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second of the video")
    p.add_argument("--background", default="white", help="white, black, gray or R,G,B in [0, 1]")
    p.add_argument("--transparent", action="store_true", help="stills: write RGBA (PNG/WebP) instead of a background")
    p.add_argument("--scale-modifier", type=float, default=1.0, help="multiply every Gaussian scale")
    p.add_argument("--backend", choices=["auto", "torch", "gsplat"], default="auto", help="rasterizer")
    add_device_argument(p)
    p.add_argument("--legacy-rotations", action="store_true",
                   help="treat quaternions as a pre-fixrot LGM checkpoint's (raw, un-normalised)")
    p.set_defaults(func=run)


def parse_background(text: str) -> tuple:
    text = text.strip().lower()
    if text in _COLOURS:
        return _COLOURS[text]
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise CLIError(f"--background must be white, black, gray or R,G,B in [0, 1], got {text!r}")
    return values


def run(args) -> int:
    import torch

    from ..cameras import Cameras
    from ..ply import load_ply
    from ..render import render
    from ..image_io import IMAGE_EXTENSIONS, write_image
    from ..video import VIDEO_EXTENSIONS, write_video

    src = Path(args.input)
    if not src.is_file():
        raise CLIError(f"input not found: {src}")
    if args.size < 8 or args.size > 8192:
        raise CLIError(f"--size must be in [8, 8192], got {args.size}")
    _check_numbers(args)
    out = Path(args.output)
    background = parse_background(args.background)
    if args.turntable is not None:
        if args.turntable < 1:
            raise CLIError("--turntable needs at least 1 frame")
        if out.suffix.lower() not in VIDEO_EXTENSIONS:
            raise CLIError(f"turntable output must end in {', '.join(VIDEO_EXTENSIONS)}, got {out.name!r}")
    elif out.suffix and out.suffix.lower() not in IMAGE_EXTENSIONS:
        raise CLIError(f"still output must end in {', '.join(IMAGE_EXTENSIONS)} or be a folder, got {out.name!r}")

    device = resolve_device(args.device)
    gaussians = load_ply(src, normalized_rotations=False if args.legacy_rotations else None)
    gaussians = gaussians.to(device)
    progress(f"loaded {gaussians.num_gaussians} Gaussians from {src} ({device})")

    if args.turntable is not None:
        cams = Cameras.turntable(args.turntable, args.elevation, args.radius, args.fovy, args.size)
        frames = []
        step = 8 if device.type == "cpu" else 60
        bar = StageProgress(f"rendering {args.size}x{args.size}", len(cams), " frames")
        for start in range(0, len(cams), step):
            res = render(gaussians, cams[start:start + step], background=background,
                         scale_modifier=args.scale_modifier, backend=args.backend)
            frames.append((res.image[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu())
            bar.update(min(len(cams), start + step))
        write_video(torch.cat(frames).numpy(), out, fps=args.fps)
        progress(f"wrote {out}")
        print(out)
        return 0

    cams = Cameras.orbit(args.elevation, list(args.views), args.radius, args.fovy, args.size)
    bg = (0.0, 0.0, 0.0) if args.transparent else background
    res = render(gaussians, cams, background=bg, scale_modifier=args.scale_modifier, backend=args.backend)
    paths = _still_paths(out, args.views, ".png")
    for i, path in enumerate(paths):
        img = res.image[0, i]
        if args.transparent:
            a = res.alpha[0, i]
            img = torch.cat([(img / a.clamp(min=1e-6)).clamp(0, 1), a], dim=-1)
        write_image(img, path)
        print(path)
    progress(f"wrote {len(paths)} image(s) ({res.backend})")
    return 0


def _check_numbers(args) -> None:
    """One-line errors for camera/video flags that would give meaningless or NaN renders."""
    import math

    def finite(x) -> bool:
        return math.isfinite(float(x))

    if not (finite(args.radius) and args.radius > 0):
        raise CLIError(f"--radius must be a positive distance, got {args.radius}")
    if not (finite(args.fovy) and 0 < args.fovy < 180):
        raise CLIError(f"--fovy must be in (0, 180) degrees, got {args.fovy}")
    if not finite(args.elevation):
        raise CLIError(f"--elevation must be a finite angle in degrees, got {args.elevation}")
    if not (finite(args.fps) and args.fps > 0):
        raise CLIError(f"--fps must be positive, got {args.fps}")
    if not (finite(args.scale_modifier) and args.scale_modifier > 0):
        raise CLIError(f"--scale-modifier must be positive, got {args.scale_modifier}")
    if args.views is not None and not all(finite(a) for a in args.views):
        raise CLIError(f"--views must be finite azimuths in degrees, got {args.views}")
    if args.turntable is not None and args.turntable > 100_000:
        raise CLIError(f"--turntable must be at most 100000 frames, got {args.turntable}")


def _still_paths(out: Path, azimuths, default_ext: str) -> list:
    if not out.suffix:  # a folder
        return [out / f"view_az{_az(a)}{default_ext}" for a in azimuths]
    if len(azimuths) == 1:
        return [out]
    return [out.with_name(f"{out.stem}_az{_az(a)}{out.suffix}") for a in azimuths]


def _az(a: float) -> str:
    a = a % 360.0
    return f"{int(a):03d}" if float(a).is_integer() else f"{a:07.3f}".replace(".", "p")
