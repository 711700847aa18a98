"""Novel-view evaluation of an LGM on held-out objects of a dataset (layout of :mod:`.layout`).

For every object: the 4 input views are ring views ``k, k + ring/4, k + ring/2, k + 3ring/4`` (k = 0:
azimuths a, a+90, a+180, a+270 at elevation 0, exactly how the model is used at inference), their poses
canonicalised so view k is LGM's front camera (docs/conventions.md#canonical-frame). The predicted
Gaussians are rendered on white at the model's ``output_size`` from every *other* view and compared with the ground truth
composited on white (bilinear, antialiased resize when the dataset size differs). Views are grouped by
elevation (rounded to whole degrees), plus "inputs" (the 4 input poses) and "novel" (all other views).

The trivial baseline paints, for every view, the test objects' mean silhouette (mean alpha over all
evaluated views) with their mean colour (alpha-weighted) over white; it tells how much of the PSNR a
white background gives away for free.

PSNR is the mean over images of 10·log10(1/MSE) (RGB in [0, 1]); SSIM is the Gaussian-window SSIM of
Wang et al. (σ 1.5) averaged over images; both from :mod:`.metrics`, as the trainer's validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras, canonicalize_cameras
from ..pipelines import views_to_gaussians
from ..views import Views
from . import layout
from .metrics import psnr, ssim


@dataclass
class ObjectScores:
    """Per-object, per-view metrics; ``group[i]`` names view i's group."""

    id: str
    views: List[int]
    group: List[str]
    psnr: List[float]
    ssim: List[float]
    baseline_psnr: List[float] = field(default_factory=list)
    baseline_ssim: List[float] = field(default_factory=list)


@dataclass
class GroupSummary:
    name: str
    images: int
    psnr: float
    ssim: float
    baseline_psnr: float
    baseline_ssim: float


def load_view(obj_dir: Path, view: int, size: int) -> tuple:
    """(rgb on white [3, size, size], alpha [1, size, size]) float32 in [0, 1] of one stored view."""
    from .dataset import read_rgba

    rgba = read_rgba(layout.rgb_path(obj_dir, view))
    if rgba.shape[-1] != size:
        rgba = F.interpolate(rgba[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    a = rgba[3:4]
    return rgba[:3] * a + (1.0 - a), a


def input_view_ids(ring: int, k: int = 0) -> List[int]:
    """The 4 ring views 90 degrees apart starting at ring view ``k``."""
    if ring < 4 or ring % 4:
        raise ValueError(f"the dataset needs an elevation-0 ring of 4k views for evaluation, has ring={ring}")
    q = ring // 4
    return [(k + i * q) % ring for i in range(4)]


def evaluate_objects(
    model,
    dataset: Path,
    objects: Sequence[layout.ObjectEntry],
    *,
    ring: int,
    fovy: float,
    progress: Optional[Callable[[str], None]] = None,
) -> List[ObjectScores]:
    """Reconstruct each object from its 4 ring input views and score renders of the other views.
    ``model`` is an :class:`~lgm_core.models.lgm.LGM` (eval mode)."""
    from ..render import render

    cfg = model.config
    out_size = cfg.output_size
    results: List[ObjectScores] = []
    for n, obj in enumerate(objects):
        obj_dir = Path(dataset) / obj.id
        inputs = input_view_ids(ring)
        poses = torch.stack([layout.stored_to_opengl(layout.read_pose(layout.pose_path(obj_dir, v)))
                             for v in range(obj.num_views)])
        order = inputs + [v for v in range(obj.num_views) if v not in inputs]
        canon = canonicalize_cameras(poses[order], radius=cfg.cam_radius)
        images = torch.stack([load_view(obj_dir, v, cfg.input_size)[0] for v in inputs])
        gaussians = views_to_gaussians(model, Views(images[None], canon[:4].to(model.device)))
        cams = Cameras(canon.to(gaussians.device), fovy, out_size, out_size)
        pred = render(gaussians, cams).image[0].permute(0, 3, 1, 2).float().cpu()
        scores = ObjectScores(obj.id, order, [], [], [])
        for i, v in enumerate(order):
            gt, _ = load_view(obj_dir, v, out_size)
            if i < 4:
                group = "inputs"
            else:
                el = obj.views[v].elevation if v < len(obj.views) else float("nan")
                group = f"elevation {round(el):+d}" if math.isfinite(el) else "other"
            scores.group.append(group)
            scores.psnr.append(float(psnr(pred[i].clamp(0, 1), gt)))
            scores.ssim.append(float(ssim(pred[i].clamp(0, 1), gt)))
        results.append(scores)
        if progress:
            novel = [p for p, g in zip(scores.psnr, scores.group) if g != "inputs"]
            progress(f"[{n + 1}/{len(objects)}] {obj.id}: novel-view PSNR {np.mean(novel):.2f} dB")
    return results


def add_baseline(dataset: Path, objects: Sequence[layout.ObjectEntry], results: List[ObjectScores], size: int) -> None:
    """Fill ``baseline_psnr``/``baseline_ssim`` of every result with the mean-silhouette, mean-colour blob."""
    alpha_sum = torch.zeros(1, size, size)
    color_sum = torch.zeros(3)
    weight = 0.0
    count = 0
    cache = {}
    for obj, res in zip(objects, results):
        for v, g in zip(res.views, res.group):
            if g == "inputs":
                continue
            gt, a = load_view(Path(dataset) / obj.id, v, size)
            cache[(obj.id, v)] = gt
            alpha_sum += a
            count += 1
            straight = (gt - (1 - a)) / a.clamp_min(1e-6)  # undo the white composite
            color_sum += (straight * a).sum((1, 2))
            weight += float(a.sum())
    mean_alpha = alpha_sum / max(count, 1)
    mean_color = (color_sum / max(weight, 1e-6)).clamp(0, 1).view(3, 1, 1)
    blob = mean_color * mean_alpha + (1 - mean_alpha)
    for obj, res in zip(objects, results):
        res.baseline_psnr, res.baseline_ssim = [], []
        for v, g in zip(res.views, res.group):
            if g == "inputs":
                res.baseline_psnr.append(float("nan"))
                res.baseline_ssim.append(float("nan"))
                continue
            gt = cache[(obj.id, v)]
            res.baseline_psnr.append(float(psnr(blob, gt)))
            res.baseline_ssim.append(float(ssim(blob, gt)))


def summarize(results: Sequence[ObjectScores]) -> List[GroupSummary]:
    """One row per group (sorted), then ``novel`` (every non-input view)."""
    rows: Dict[str, List[tuple]] = {}
    for r in results:
        for i, g in enumerate(r.group):
            bp = r.baseline_psnr[i] if r.baseline_psnr else float("nan")
            bs = r.baseline_ssim[i] if r.baseline_ssim else float("nan")
            item = (r.psnr[i], r.ssim[i], bp, bs)
            rows.setdefault(g, []).append(item)
            if g != "inputs":
                rows.setdefault("novel", []).append(item)

    def key(name: str):
        return (name == "novel", name != "inputs", name)

    out = []
    for name in sorted(rows, key=key):
        a = np.array(rows[name], dtype=np.float64)
        out.append(GroupSummary(name, len(a), *[float(np.nanmean(a[:, j])) if np.isfinite(a[:, j]).any()
                                                else float("nan") for j in range(4)]))
    return out


def format_table(summary: Sequence[GroupSummary]) -> str:
    lines = ["| views | images | PSNR (dB) | SSIM | baseline PSNR | baseline SSIM |", "|---|---|---|---|---|---|"]
    for s in summary:
        base = "–" if math.isnan(s.baseline_psnr) else f"{s.baseline_psnr:.2f}"
        bss = "–" if math.isnan(s.baseline_ssim) else f"{s.baseline_ssim:.3f}"
        lines.append(f"| {s.name} | {s.images} | {s.psnr:.2f} | {s.ssim:.3f} | {base} | {bss} |")
    return "\n".join(lines)
