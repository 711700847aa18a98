"""Mesh extraction quality and speed on synthetic scenes with a known surface.

Scenes (``lgm_core.mesh.synthetic``): LGM-like Gaussians (65,536 by default, random orientations,
per-axis scales log-uniform in [0.005, 0.02], opacities in [0.5, 1]) sampled on a sphere, a torus,
a box and a composite with thin parts (a 2 cm fin and a 2.4 cm rod). For each scene:

* geometry vs the source surface: Chamfer-L1 (mean of both directions' mean nearest distances)
  and F-score at 1 % and 2 % (precision/recall of points within that distance), all in units of
  the source's bounding-box diagonal, from 200k points sampled on each surface;
* appearance: PSNR of the textured mesh (``lgm_core.mesh.render_mesh``, 2x supersampled) vs the
  Gaussians (``lgm_core.render.render``), 24 orbit views (12 azimuths x elevations -20/+30,
  radius 1.5, fovy 49.1) at 512x512 on white;
* time of ``extract_mesh`` at default settings (median of ``--repeats`` after one warm-up) and
  peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS).

Usage::

    python benchmarks/mesh_quality.py                      # all scenes, defaults, table to stdout
    python benchmarks/mesh_quality.py --scenes sphere --views 4 --size 256 --n 16384   # quick
    python benchmarks/mesh_quality.py --speed-only         # timing of the sphere scene only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lgm_core.cameras import Cameras  # noqa: E402
from lgm_core.mesh import extract_mesh, render_mesh  # noqa: E402
from lgm_core.mesh.synthetic import SCENES, make_scene, sample_surface  # noqa: E402
from lgm_core.runtime import default_device  # noqa: E402


def sample_mesh_points(mesh, n: int, seed: int = 0) -> np.ndarray:
    """``n`` area-uniform points on ``mesh``."""
    return sample_points(mesh.vertices.double().numpy()[mesh.faces.numpy()], n, seed)


def sample_points(corners: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` area-uniform points on a triangle soup [F, 3, 3]."""
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(corners), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    return (1 - s)[:, None] * a[idx] + (s * (1 - r2))[:, None] * b[idx] + (s * r2)[:, None] * c[idx]


def bad_edges(faces: np.ndarray) -> int:
    """Edges not shared by exactly two faces (boundary or non-manifold)."""
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts != 2).sum())


def geometry_metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
    from scipy.spatial import cKDTree

    diag = float(np.linalg.norm(ref.max(0) - ref.min(0)))
    d_pr = cKDTree(ref).query(pred, workers=-1)[0] / diag  # precision side
    d_rp = cKDTree(pred).query(ref, workers=-1)[0] / diag  # recall side
    out = {"chamfer_l1": 0.5 * (d_pr.mean() + d_rp.mean()), "diag": diag}
    for t in (0.01, 0.02):
        p, r = (d_pr < t).mean(), (d_rp < t).mean()
        out[f"f@{t}"] = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return out


def orbit_cameras(views: int, size: int) -> Cameras:
    per = max(1, views // 2)
    az = np.arange(per) * (360.0 / per)
    el = np.concatenate([np.full(per, -20.0), np.full(views - per, 30.0)])
    az = np.concatenate([az, az[: views - per] + 15.0])
    return Cameras.orbit(el.tolist(), az.tolist(), radius=1.5, fovy=49.1, size=size)


def appearance_psnr(g, mesh, cams: Cameras, device) -> tuple:
    from lgm_core.render import render

    ref = render(g.to(device), cams.to(device), background=(1, 1, 1)).image[0]
    out = render_mesh(mesh, cams.to(device), supersample=2, device=device).image
    mse = ((out.double() - ref.double()) ** 2).mean(dim=(1, 2, 3))
    psnrs = (10 * torch.log10(1.0 / mse.clamp_min(1e-12))).cpu().numpy()
    return float(psnrs.mean()), float(psnrs.min()), out, ref


def peak_memory(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def time_extract(g, device, repeats: int, **kw) -> tuple:
    if repeats > 1:
        extract_mesh(g, device=device, **kw)  # warm-up (imports, kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    mesh = None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        mesh = extract_mesh(g, device=device, **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), mesh


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    ap.add_argument("--style", default="surfel", choices=["surfel", "fuzzy"],
                    help="surfel: flat splats in the surface; fuzzy: random orientations (harsher)")
    ap.add_argument("--n", type=int, default=65_536, help="Gaussians per scene")
    ap.add_argument("--views", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--resolution", type=int, default=None, help="override extract_mesh's default")
    ap.add_argument("--level", type=lambda v: v if v == "auto" else float(v), default=None,
                    help="override extract_mesh's default (a number or 'auto')")
    ap.add_argument("--max-level", type=float, default=None, help="extract_mesh(max_level=...): bound on level='auto'")
    ap.add_argument("--snap", action="store_true", help="extract_mesh(snap=True): surface on the centres")
    for name, choices in (("mc-method", ["torch", "skimage"]), ("decimation", ["torch", "fast_simplification"]),
                          ("uv-method", ["charts", "xatlas"])):
        ap.add_argument(f"--{name}", default=None, choices=choices, help="extract_mesh stage backend (default: auto)")
    ap.add_argument("--speed-only", action="store_true", help="only time extraction on the first scene")
    ap.add_argument("--save", default=None, help="folder for a preview image per scene (Gaussians above, mesh below)")
    ap.add_argument("--save-glb", action="store_true", help="also write each scene's mesh as .glb into --save")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    device = torch.device(args.device) if args.device else default_device()
    kw = {}
    if args.resolution is not None:
        kw["resolution"] = args.resolution
    if args.level is not None:
        kw["level"] = args.level
    if args.max_level is not None:
        kw["max_level"] = args.max_level
    if args.snap:
        kw["snap"] = True
    for name in ("mc_method", "decimation", "uv_method"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"# device: {name}; torch {torch.__version__}; {args.n} {args.style} Gaussians; "
          f"{args.views} views at {args.size}^2; extract_mesh settings: {kw or 'default'}")

    if args.speed_only:
        g = make_scene(args.scenes[0], args.n, style=args.style)
        t, mesh = time_extract(g, device, args.repeats, **kw)
        print(f"| {args.scenes[0]} | {t:.2f} s | {peak_memory(device)} | {mesh.num_faces} faces |")
        return 0

    cams = orbit_cameras(args.views, args.size)
    rows = []
    print("| scene | Chamfer-L1 | F@0.01 | F@0.02 | PSNR mean | PSNR min | faces | bad edges | time | peak mem |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scene in args.scenes:
        g = make_scene(scene, args.n, style=args.style)
        t, mesh = time_extract(g, device, args.repeats, **kw)
        mem = peak_memory(device)
        ref_pts, _, _ = sample_surface(scene, 200_000, seed=123)
        geo = geometry_metrics(sample_mesh_points(mesh, 200_000, seed=7), ref_pts)
        p_mean, p_min, out, ref = appearance_psnr(g, mesh, cams, device)
        welded = mesh.to_trimesh()
        welded.merge_vertices(merge_tex=True, merge_norm=True)
        nbad = bad_edges(np.asarray(welded.faces))
        row = dict(scene=scene, style=args.style, bad_edges=nbad, time_s=t, peak_mem=mem, faces=mesh.num_faces, vertices=mesh.num_vertices,
                   psnr_mean=p_mean, psnr_min=p_min, **geo)
        rows.append(row)
        print(f"| {scene} | {geo['chamfer_l1']:.4f} | {geo['f@0.01']:.3f} | {geo['f@0.02']:.3f} | "
              f"{p_mean:.2f} dB | {p_min:.2f} dB | {mesh.num_faces} | {nbad} | {t:.2f} s | {mem} |", flush=True)
        if args.save:
            folder = Path(args.save)
            folder.mkdir(parents=True, exist_ok=True)
            if args.save_glb:
                mesh.export(folder / f"{scene}.glb")
            from PIL import Image

            k = min(4, out.shape[0])
            strip = torch.cat([torch.cat([ref[i], out[i]], 0) for i in range(k)], 1)
            Image.fromarray((strip.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)).save(folder / f"{scene}.png")
    ok = all(r["f@0.02"] >= 0.90 and r["psnr_mean"] >= 26.0 for r in rows)
    print(f"# goals (F@0.02 >= 0.90 and PSNR >= 26 dB on every scene): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
