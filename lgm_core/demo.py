"""The offline demo: the small LGM shipped in ``lgm_core/assets/demo`` turns 4 shipped views of a held-out
object (``examples/demo``) into Gaussians, renders, a turntable and a textured mesh — no network, CPU-sized.

``load_lgm("demo")`` (CLI: ``--weights demo``) loads the model; ``python -m lgm_core demo -o OUT/`` runs
:func:`run_demo`. The model card (``lgm_core/assets/demo/MODEL_CARD.md``) says how it was trained, on what
data (Sweet Home 3D furniture, CC0 / CC-BY-3.0, attribution in ``ATTRIBUTION.md``) and how well it does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from .demo_assets import ASSETS_DIR, EXAMPLE_DIR, VIEW_FILES, WEIGHTS_FILE, demo_weights_path  # noqa: F401


def example_views(folder: Optional[Union[str, Path]] = None) -> torch.Tensor:
    """The 4 example views [4, 3, H, W] in [0, 1] on white, from ``folder`` (default: the shipped example).
    The folder holds ``view_000.png``, ``view_090.png``, ``view_180.png``, ``view_270.png`` (RGBA or RGB,
    square, same size)."""
    from .image_io import load_image
    from .preprocess import composite

    folder = Path(folder) if folder is not None else EXAMPLE_DIR
    missing = [n for n in VIEW_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (4 views of one object: front, then "
                                "turned by 90, 180, 270 degrees; pass another folder with --views)")
    views = []
    for name in VIEW_FILES:  # the project's checked image reader (bad, huge or ambiguous files: one-line errors)
        img = load_image(folder / name)
        if img.shape[-1] == 4:
            img = composite(img[..., :3], img[..., 3])
        views.append(img.permute(2, 0, 1).contiguous())
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1 or views[0].shape[1] != views[0].shape[2]:
        raise ValueError(f"{folder}: the 4 views must be square and of one size, got {sorted(shapes)}")
    return torch.stack(views)


@dataclass
class DemoResult:
    """Files written by :func:`run_demo` and what it measured."""

    ply: Path
    video: Optional[Path]
    mesh: Optional[Path]
    sheet: Path
    psnr_inputs: float
    num_gaussians: int
    seconds: float


def run_demo(
    output: Union[str, Path],
    *,
    weights: str = "demo",
    views: Optional[Union[str, Path]] = None,
    device: Optional[Union[str, torch.device]] = None,
    turntable_frames: int = 36,
    render_size: int = 256,
    mesh: bool = True,
    mesh_resolution: int = 128,
    texture_size: int = 512,
    progress: Callable[[str], None] = print,
) -> DemoResult:
    """Views -> Gaussians (``gaussians.ply``) -> ``turntable.mp4`` -> textured ``mesh.glb`` ->
    ``side_by_side.png`` (rows: the input views | renders from the same poses | novel views at elevation 20
    between them). Returns the paths and the PSNR of the input-pose renders against the inputs."""
    from .cameras import Cameras, default_input_cameras
    from .image_io import write_image
    from .pipelines import views_to_gaussians
    from .ply import save_ply
    from .render import render, psnr
    from .runtime import default_device
    from .video import write_video
    from .views import Views
    from .weights import load_lgm

    t0 = time.perf_counter()
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device) if device is not None else default_device()
    images = example_views(views)
    model = load_lgm(weights, device=dev).optimize_for_inference()
    progress(f"loaded {weights} LGM ({model.preset or 'custom'}, input {model.config.input_size}px, "
             f"{model.config.num_gaussians} Gaussians) on {dev}")
    gaussians = views_to_gaussians(model, Views(images[None]).to(dev))
    ply = out / "gaussians.ply"
    save_ply(gaussians, ply)
    progress(f"wrote {ply} ({gaussians.num_gaussians} Gaussians, {time.perf_counter() - t0:.1f} s)")

    size = int(images.shape[-1])
    at_inputs = render(gaussians, Cameras(default_input_cameras(0.0).to(dev), width=size, height=size)).image[0]
    pred = at_inputs.permute(0, 3, 1, 2).cpu()
    score = float(np.mean([psnr(pred[i], images[i]) for i in range(4)]))
    novel = render(gaussians, Cameras.orbit(20.0, [45.0, 135.0, 225.0, 315.0], size=size).to(dev)).image[0].cpu()
    rows = [images.permute(0, 2, 3, 1), pred.permute(0, 2, 3, 1), novel]
    sheet = torch.cat([torch.cat(list(r), dim=1) for r in rows], dim=0)
    sheet_path = write_image(sheet.numpy(), out / "side_by_side.png")
    progress(f"wrote {sheet_path} (inputs | renders at the input poses | novel views); "
             f"PSNR of the renders against the inputs: {score:.2f} dB")

    video = None
    if turntable_frames > 0:
        cams = Cameras.turntable(turntable_frames, 15.0, size=render_size).to(dev)
        frames = torch.cat([render(gaussians, cams[i:i + 12]).image[0].cpu() for i in range(0, len(cams), 12)])
        video = write_video(frames.numpy(), out / "turntable.mp4", fps=24)
        progress(f"wrote {video} ({turntable_frames} frames at {render_size}px, {time.perf_counter() - t0:.1f} s)")

    glb = None
    if mesh:
        from .mesh import extract_mesh

        m = extract_mesh(gaussians, resolution=mesh_resolution, target_faces=20_000, texture_size=texture_size,
                         device=dev)
        glb = out / "mesh.glb"
        m.export(glb)
        progress(f"wrote {glb} ({m.num_faces} faces, {time.perf_counter() - t0:.1f} s)")
    return DemoResult(ply, video, glb, sheet_path, score, gaussians.num_gaussians, time.perf_counter() - t0)
