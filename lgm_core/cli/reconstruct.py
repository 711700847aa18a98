"""``python -m lgm_core reconstruct``: 4 view images (or one 2x2 grid) -> Gaussians .ply."""

from __future__ import annotations

import time

from . import CLIError, progress
from .common import (HelpFormatter, add_device_argument, add_dtype_argument, resolve_device, resolve_dtype,
                     unavailable_models_error)


def register(sub) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="4 views (or a 2x2 grid image) -> 3D Gaussians .ply",
        description=(
            "Reconstruct 3D Gaussians from 4 views of an object with LGM. Views are given in LGM order: "
            "front (azimuth 0), then the object turned by 90, 180 and 270 degrees (cameras on +z, +x, -z, -x). "
            "A 2x2 grid holds them in reading order. RGBA images are composited over white."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="+", help="4 view images, or 1 grid image with the 4 views in a 2x2 layout")
    p.add_argument("-o", "--output", required=True, help="output .ply path (or .splat for web viewers)")
    p.add_argument("--weights", default=None,
                   help="LGM checkpoint: .safetensors file, folder, or hub repo id (default: ashawkey/LGM, "
                        "model_fp16_fixrot.safetensors, downloaded on first use)")
    p.add_argument("--preset", choices=["big", "small", "lrm", "tiny"], default=None,
                   help="architecture (default: detected from the checkpoint)")
    p.add_argument("--elevation", type=float, default=0.0,
                   help="camera elevation of the views in degrees, positive = cameras above the object")
    add_device_argument(p)
    add_dtype_argument(p, "weights precision")
    p.add_argument("--min-opacity", type=float, default=0.005, help="drop Gaussians below this opacity in the .ply")
    p.set_defaults(func=run)


def load_views(paths, elevation: float = 0.0):
    """Image paths (4 views, or 1 grid of them) -> :class:`~lgm_core.views.Views` (RGBA composited over
    white; views of other sizes resized to the first one's)."""
    import torch
    import torch.nn.functional as F

    from ..image_io import load_image
    from ..preprocess import composite, split_grid
    from ..views import Views

    if len(paths) == 1:
        views = list(split_grid(load_image(paths[0])))
    elif len(paths) == 4:
        views = [load_image(p) for p in paths]
    else:
        raise CLIError(f"give exactly 4 view images or 1 grid image, got {len(paths)}")
    size = views[0].shape[0]
    rgb = []
    for i, im in enumerate(views):
        if im.shape[0] != im.shape[1]:
            raise CLIError(f"view {i} must be square, got {im.shape[1]}x{im.shape[0]}")
        if im.shape[-1] == 4:
            im = composite(im[..., :3], im[..., 3])
        if im.shape[0] != size:
            im = F.interpolate(im.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                               align_corners=False, antialias=True)[0].permute(1, 2, 0)
        rgb.append(im)
    return Views.from_channels_last(torch.stack(rgb), elevation=elevation)


def check_output(args) -> None:
    """Flags that must be right before anything slow happens (one-line errors)."""
    import math
    from pathlib import Path

    if Path(args.output).suffix.lower() not in (".ply", ".splat"):
        raise CLIError(f"-o must end in .ply (or .splat), got {Path(args.output).name!r}")
    if not math.isfinite(args.elevation):
        raise CLIError(f"--elevation must be a finite angle in degrees, got {args.elevation}")
    if not (math.isfinite(args.min_opacity) and 0 <= args.min_opacity <= 1):
        raise CLIError(f"--min-opacity must be in [0, 1], got {args.min_opacity}")


def run(args) -> int:
    from ..hub import HubUnavailable
    from ..pipelines import views_to_gaussians
    from ..weights import load_lgm, resolve_checkpoint

    check_output(args)
    device = resolve_device(args.device)
    views = load_views(args.images, args.elevation)  # validated here, before the model loads
    dtype = resolve_dtype(args.dtype, device)
    try:
        weights = resolve_checkpoint(args.weights)  # local file, hub cache, or a download
    except HubUnavailable as exc:
        raise unavailable_models_error([("--weights", exc)]) from None
    t0 = time.perf_counter()
    progress("loading LGM ...")
    model = load_lgm(weights, preset=args.preset, dtype=dtype, device=device).optimize_for_inference()
    progress(f"loaded {model.preset or 'custom'} LGM on {model.device} ({model.dtype}) "
             f"in {time.perf_counter() - t0:.1f} s")
    t1 = time.perf_counter()
    gaussians = views_to_gaussians(model, views)
    progress(f"reconstructed {gaussians.num_gaussians} Gaussians in {time.perf_counter() - t1:.2f} s")
    if args.output.lower().endswith(".splat"):
        from ..splat_formats import save_splat

        save_splat(gaussians, args.output, min_opacity=args.min_opacity)
    else:
        from ..ply import save_ply

        save_ply(gaussians, args.output, min_opacity=args.min_opacity)
    progress(f"wrote {args.output}")
    return 0
