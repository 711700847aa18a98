"""``python -m lgm_core text-to-3d`` / ``image-to-3d``: multi-view diffusion -> LGM -> .ply (+ views, turntable).

    python -m lgm_core text-to-3d "a ceramic owl" -o out/
    python -m lgm_core image-to-3d photo.png -o out/

Writes ``OUT/gaussians.ply``, ``OUT/views.png`` (2x2 grid in LGM's layout [[v1, v2], [v3, v0]], i.e.
LGM view order front/90/180/270 in reading order; ``python -m lgm_core reconstruct OUT/views.png`` reads
it back) and, when the renderer is available, ``OUT/turntable.mp4``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import hub
from . import CLIError, progress
from .common import (HelpFormatter, StageProgress, add_device_argument, add_dtype_argument, device_default,
                     resolve_device, resolve_dtype, unavailable_models_error)

TURNTABLE_FRAMES = {"cuda": 120, "cpu": 24}
TURNTABLE_SIZE = {"cuda": 512, "cpu": 256}
"""Turntable defaults: the GPU value, and a bounded one for CPU (and MPS) runs."""


def add_generation_arguments(p: argparse.ArgumentParser, default_model, default_guidance, *,
                             turntable: bool = True) -> None:
    """The options text-to-3d, image-to-3d and batch share. ``default_model``/``default_guidance`` None:
    chosen by the command from its input (MVDream 7.5 for text, ImageDream 5.0 for images)."""
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--negative-prompt", default=None,
                   help="negative prompt (default: LGM app's list for text-to-3d, empty for image-to-3d)")
    p.add_argument("--seed", type=int, default=0, help="random seed (all randomness comes from it)")
    p.add_argument("--steps", type=int, default=30, help="diffusion steps")
    p.add_argument("--guidance", type=float, default=default_guidance,
                   help="classifier-free guidance scale (<= 1: off)" + (
                       "" if default_guidance is not None else "; default 7.5 for text, 5.0 for images"))
    p.add_argument("--elevation", type=float, default=0.0,
                   help="camera elevation in degrees, positive = cameras above the object (LGM's app used the "
                        "opposite sign: its e is our -e)")
    p.add_argument("--mv-model", default=default_model,
                   help="multi-view diffusion model: hub-layout folder or hub repo id" + (
                       "" if default_model is not None else
                       f"; default {hub.MVDREAM.repo_id} for text, {hub.IMAGEDREAM.repo_id} for images"))
    p.add_argument("--lgm-weights", default=None,
                   help="LGM checkpoint: .safetensors file, folder or hub repo id (default: ashawkey/LGM from the hub)")
    p.add_argument("--lgm-preset", choices=["big", "small", "lrm", "tiny"], default=None,
                   help="LGM architecture (default: detected from the checkpoint)")
    add_device_argument(p)
    add_dtype_argument(p)
    p.add_argument("--min-opacity", type=float, default=0.005, help="drop Gaussians below this opacity in the .ply")
    if not turntable:
        return
    p.add_argument("--turntable-frames", type=int, default=None,
                   help=f"turntable video frames, 0: no video (default: {TURNTABLE_FRAMES['cuda']} on CUDA, "
                        f"{TURNTABLE_FRAMES['cpu']} on CPU)")
    p.add_argument("--turntable-size", type=int, default=None,
                   help=f"turntable video size in pixels (default: {TURNTABLE_SIZE['cuda']} on CUDA, "
                        f"{TURNTABLE_SIZE['cpu']} on CPU)")


def register(sub) -> None:
    fmt = HelpFormatter
    t = sub.add_parser("text-to-3d", help="text prompt -> 4 views (MVDream) -> 3D Gaussians (LGM)",
                       description="Text -> 4 views with MVDream -> 3D Gaussians with LGM.", formatter_class=fmt)
    t.add_argument("prompt", help="text prompt, e.g. 'a ceramic owl'")
    add_generation_arguments(t, hub.MVDREAM.repo_id, 7.5)
    t.set_defaults(func=run_text)

    i = sub.add_parser("image-to-3d", help="object image -> 4 views (ImageDream) -> 3D Gaussians (LGM)",
                       description=("Image -> 4 views with ImageDream -> 3D Gaussians with LGM. RGBA images are "
                                    "recentred on their alpha mask and composited on white; RGB images are used "
                                    "as they are (padded to a square): remove the background first for best results."),
                       formatter_class=fmt)
    i.add_argument("image", help="input image (PNG with alpha preferred)")
    i.add_argument("--prompt", default="", help="optional text prompt")
    i.add_argument("--border-ratio", type=float, default=0.2, help="free border around the recentred object")
    add_generation_arguments(i, hub.IMAGEDREAM.repo_id, 5.0)
    i.set_defaults(func=run_image)


def resolve_models(args):
    """Local paths of the multi-view model and the LGM checkpoint, fetched from the hub when needed. Both
    are checked before any work, and what cannot be had (offline, nothing cached) is one error line."""
    from ..hub import HubUnavailable
    from ..mvdiffusion.loading import resolve_source
    from ..weights import resolve_checkpoint

    problems = []
    mv_path = lgm_path = None
    try:
        mv_path = resolve_source(args.mv_model)
    except HubUnavailable as exc:
        problems.append(("--mv-model", exc))
    try:
        lgm_path = resolve_checkpoint(args.lgm_weights)
    except HubUnavailable as exc:
        problems.append(("--lgm-weights", exc))
    if problems:
        raise unavailable_models_error(problems)
    return mv_path, lgm_path


def check_generation_arguments(args) -> None:
    """One-line errors for sampling options out of range (before any model is loaded)."""
    import math

    if args.steps < 1:
        raise CLIError("--steps must be >= 1")
    if not math.isfinite(args.elevation) or not math.isfinite(args.guidance):
        raise CLIError("--elevation and --guidance must be finite numbers")
    if not (math.isfinite(args.min_opacity) and 0 <= args.min_opacity <= 1):
        raise CLIError(f"--min-opacity must be in [0, 1], got {args.min_opacity}")


def _generate(args, stage, **options) -> int:
    """``stage`` (``pipelines.text_to_views`` / ``image_to_views``) with ``options``, then LGM: the
    multi-view model is freed before LGM is loaded (one model in memory at a time)."""
    import torch

    from ..mvdiffusion import MultiViewPipeline
    from ..pipelines import image_to_views, views_to_gaussians

    check_generation_arguments(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    frames = device_default(device, TURNTABLE_FRAMES["cuda"], TURNTABLE_FRAMES["cpu"]) \
        if args.turntable_frames is None else args.turntable_frames
    size = device_default(device, TURNTABLE_SIZE["cuda"], TURNTABLE_SIZE["cpu"]) \
        if args.turntable_size is None else args.turntable_size
    if frames < 0 or not 8 <= size <= 8192:
        raise CLIError(f"--turntable-frames must be >= 0 and --turntable-size in [8, 8192], got {frames}, {size}")
    mv_path, lgm_path = resolve_models(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    progress(f"loading multi-view model {args.mv_model} ...")
    pipe = MultiViewPipeline.from_pretrained(mv_path, dtype=dtype, device=device).optimize_for_inference()
    progress(f"loaded in {time.perf_counter() - t0:.1f} s ({device}, {dtype})")
    wants_image = stage is image_to_views
    if wants_image and not pipe.is_imagedream:
        raise CLIError(f"{args.mv_model} is a text-only (MVDream) model; image-to-3d needs an ImageDream model")
    if not wants_image and pipe.is_imagedream:
        raise CLIError(f"{args.mv_model} is an ImageDream model; text-to-3d needs an MVDream model")

    bar = StageProgress("diffusion", args.steps, " steps")
    t1 = time.perf_counter()
    views = stage(pipe, steps=args.steps, guidance=args.guidance, elevation=args.elevation, seed=args.seed,
                  callback=lambda step, _t, _x: bar.update(step), **options)
    progress(f"4 views in {time.perf_counter() - t1:.2f} s")
    from ..image_io import write_image

    write_image(views.grid(0), out_dir / "views.png")
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()

    from ..weights import load_lgm

    progress("loading LGM ...")
    model = load_lgm(lgm_path, preset=args.lgm_preset, dtype=dtype, device=device).optimize_for_inference()
    t2 = time.perf_counter()
    gaussians = views_to_gaussians(model, views)
    progress(f"reconstructed {gaussians.num_gaussians} Gaussians in {time.perf_counter() - t2:.2f} s")
    ply = out_dir / "gaussians.ply"
    from ..ply import save_ply

    save_ply(gaussians, ply, min_opacity=args.min_opacity)
    progress(f"wrote {ply}")

    if frames > 0:
        try:
            from ..cameras import Cameras
            from ..render import render
            from ..video import write_video
        except ImportError as exc:  # renderer not available in this install
            progress(f"skipping turntable ({exc})")
            return 0
        cams = Cameras.turntable(frames, args.elevation, size=size).to(gaussians.device)
        chunk = 16 if device.type == "cuda" else 4
        bar = StageProgress(f"turntable {size}x{size}", frames, " frames")
        rendered = []
        for start in range(0, len(cams), chunk):
            rendered.append(render(gaussians, cams[start:start + chunk]).image[0].cpu())
            bar.update(start + len(rendered[-1]))
        video = out_dir / "turntable.mp4"
        write_video(torch.cat(rendered).numpy(), video, fps=30)
        progress(f"wrote {video} ({frames} frames; --turntable-frames/--turntable-size change it)")
    return 0


def run_text(args) -> int:
    from ..pipelines import DEFAULT_NEGATIVE_PROMPT, text_to_views

    if not args.prompt.strip():
        raise CLIError("the prompt is empty")
    negative = DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
    return _generate(args, text_to_views, prompt=args.prompt, negative_prompt=negative)


def run_image(args) -> int:
    from ..image_io import load_image
    from ..pipelines import image_to_views, prepare_input_image

    img = load_image(args.image)  # [H, W, 3|4] float in [0, 1]; FileNotFoundError / ValueError on bad files
    img = prepare_input_image(img, border_ratio=args.border_ratio)  # bad input fails before any model loads
    negative = "" if args.negative_prompt is None else args.negative_prompt
    return _generate(args, image_to_views, image=img, prepared=True, prompt=args.prompt, negative_prompt=negative)
