#!/usr/bin/env python3
"""Mesh extraction on real LGM outputs: the demo model's Gaussians of the held-out test objects.

For each object of ``examples/demo_test_objects`` (views rendered and cached as in
``benchmarks/eval_demo.py``): the demo LGM reconstructs Gaussians from the 4 ring input views
(poses canonicalised, :mod:`lgm_core.training.evaluate`), then

* ours: ``extract_mesh`` at its defaults (textured), and, with ``--comfyui``, ComfyUI core 0.33's
  ``SplatToMesh`` at its node defaults on the same Gaussians (vertex colours; its y/z flip undone and
  its linear colours turned back to sRGB, so both meshes are rendered alike);
* geometry vs the ground-truth mesh (normalised as ``prepare-data`` does and moved into the
  canonical frame): Chamfer-L1 (mean of both directions' mean nearest distances) and F-score at 1 %,
  in units of the ground truth's bounding-box diagonal, from ``--points`` surface samples each;
  "splat centres" scores the Gaussians' own centres (opacity >= 0.5) as a reference;
* appearance: PSNR / SSIM of the mesh rendered unlit (``render_mesh``, 2x supersampled) vs the
  Gaussians rendered (``lgm_core.render.render``) at the dataset's novel views (the 28 non-input views),
  at the model's output size on white; and PSNR of the mesh's and of the Gaussians' renders vs the
  ground-truth images;
* unless ``--no-refine``: the same mesh after :func:`lgm_core.mesh.refine.refine_texture` (texture fitted to
  splat renders from 24 orbit views at elevations -20/10/40, not the evaluation views);
* topology: parts, boundary edges, non-manifold edges, stray islands (< 16 faces);
* with ``--analyse``: what the Gaussians themselves allow — their rendered (expected) depth at the
  novel views, back-projected where alpha > 0.5, scored against the ground truth like a mesh — and
  extract_mesh variants: an iso-level sweep, ``snap=True``, the other UV method, and
  ``level="auto"`` (the level calibrated on the splat's rendered depth, see docs/mesh_extraction.md);
  precision and recall are printed beside every F-score.

    python benchmarks/mesh_eval_demo.py --limit 4                 # ours only, system python
    .comfyui/0.33.0/venv/bin/python benchmarks/mesh_eval_demo.py --limit 4 --comfyui .comfyui/0.33.0/ComfyUI
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def geometry(pred: np.ndarray, ref: np.ndarray, diag: float) -> dict:
    from scipy.spatial import cKDTree

    d_pr = cKDTree(ref).query(pred, workers=-1)[0] / diag
    d_rp = cKDTree(pred).query(ref, workers=-1)[0] / diag
    p, r = (d_pr < 0.01).mean(), (d_rp < 0.01).mean()
    return {"chamfer": float(0.5 * (d_pr.mean() + d_rp.mean())), "f1": float(0 if p + r == 0 else 2 * p * r / (p + r)),
            "precision": float(p), "recall": float(r)}


def topology(faces: np.ndarray) -> dict:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    n = int(faces.max()) + 1
    ee = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    ncomp, lab = connected_components(coo_matrix((np.ones(len(ee)), (ee[:, 0], ee[:, 1])), shape=(n, n)),
                                      directed=False)
    per = np.bincount(lab[faces[:, 0]], minlength=ncomp)
    per = per[per > 0]
    return {"parts": int(len(per)), "islands": int((per < 16).sum()), "boundary": int((counts == 1).sum()),
            "nonmanifold": int((counts > 2).sum())}


def welded_faces(mesh) -> np.ndarray:
    import torch

    _, inv = torch.unique(mesh.vertices, dim=0, return_inverse=True)
    f = inv[mesh.faces].numpy()
    return f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]


def appearance(mesh, cams, splat_img, gt_img) -> tuple:
    """(PSNR, SSIM vs the splat renders, PSNR vs the ground-truth images) of the mesh's renders."""
    from lgm_core.mesh import render_mesh
    from lgm_core.training.metrics import psnr, ssim

    img = render_mesh(mesh, cams, supersample=2).image.permute(0, 3, 1, 2).float().cpu()
    return (float(np.mean([float(psnr(img[i], splat_img[i])) for i in range(len(img))])),
            float(np.mean([float(ssim(img[i], splat_img[i])) for i in range(len(img))])),
            float(np.mean([float(psnr(img[i], gt_img[i])) for i in range(len(img))])))


def splat_depth_points(g, cams, min_alpha: float = 0.5):
    """World points [P, 3] of the Gaussians' expected rendered depth where their alpha > ``min_alpha``."""
    import torch

    from lgm_core.geometry import intrinsics, opengl_to_opencv
    from lgm_core.render import render

    out = render(g, cams)
    H, W = cams.height, cams.width
    K = intrinsics(W, H, cams.fovy)[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    pts = []
    for i in range(len(cams)):
        z = out.depth[0, i, ..., 0].cpu()
        m = (out.alpha[0, i, ..., 0].cpu() > min_alpha) & (z > 0)
        cam = torch.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], -1)[m]
        c2w = opengl_to_opencv(cams.c2w[i].cpu().float())
        pts.append(cam @ c2w[:3, :3].T + c2w[:3, 3])
    return torch.cat(pts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", "--count", type=int, default=6, dest="limit",
                    help="first N held-out objects (0 = all 40)")
    ap.add_argument("--analyse", action="store_true",
                    help="also score the splat's rendered depth and extract_mesh variants (level sweep, snap, "
                         "level='auto', the other UV method)")
    ap.add_argument("--levels", type=float, nargs="*", default=[0.3, 0.5, 1.0], help="--analyse level sweep")
    ap.add_argument("--variants", nargs="*", default=["snap", "auto", "xatlas"], choices=["snap", "auto", "auto_capped", "xatlas", "torch"],
                    help="--analyse: further extract_mesh variants ('torch': the CUDA defaults' PyTorch stages)")
    ap.add_argument("--data", type=Path, default=REPO / "out" / "demo_test_views", help="cached test views")
    ap.add_argument("--comfyui", type=Path, default=None, help="ComfyUI 0.33 tree: also score core's SplatToMesh")
    ap.add_argument("--points", type=int, default=100_000, help="surface samples per mesh for the geometry")
    ap.add_argument("--refine", type=int, default=0, help="Adam steps after refine_texture's back-projection")
    ap.add_argument("--no-refine", action="store_true", help="do not score refine_texture")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mc-method", default=None, choices=["torch", "skimage"],
                    help="extract_mesh(mc_method=...) for every mesh of ours (default: extract_mesh's)")
    ap.add_argument("--decimation", default=None, choices=["torch", "fast_simplification"],
                    help="extract_mesh(decimation=...) for every mesh of ours (default: extract_mesh's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from eval_demo import TEST_OBJECTS, prepare_test_views
    from mesh_quality import sample_mesh_points, sample_points
    from lgm_core.cameras import Cameras, canonicalize_cameras
    from lgm_core.mesh import Mesh, extract_mesh
    from lgm_core.mesh.texturing import linear_to_srgb
    from lgm_core.render import render
    from lgm_core.training import layout
    from lgm_core.training.evaluate import input_view_ids, load_view
    from lgm_core.training.metrics import psnr, ssim
    from lgm_core.training.prepare import load_render_mesh, normalize_mesh, read_sources_file
    from lgm_core.weights import load_lgm

    core = None
    if args.comfyui:
        from mesh_profile import import_core, run_core

        core = import_core(args.comfyui, args.device)
    prepare_test_views(args.data, args.limit)
    manifest = layout.DatasetManifest.read(args.data)
    sources = {s.id: s for s in read_sources_file(TEST_OBJECTS / "sources.json")}
    wanted = [s for s in sources][: args.limit or None]
    objects = sorted([o for o in manifest.objects if o.id in wanted], key=lambda o: wanted.index(o.id))
    model = load_lgm("demo", device=args.device, dtype=torch.float32)
    cfg = model.config
    base = {k: getattr(args, k) for k in ("mc_method", "decimation") if getattr(args, k) is not None}  # every mesh of ours
    rows = []
    for k, obj in enumerate(objects):
        obj_dir = args.data / obj.id
        inputs = input_view_ids(manifest.ring)
        poses = torch.stack([layout.stored_to_opengl(layout.read_pose(layout.pose_path(obj_dir, v)))
                             for v in range(obj.num_views)])
        order = inputs + [v for v in range(obj.num_views) if v not in inputs]
        canon = canonicalize_cameras(poses[order], radius=cfg.cam_radius)
        images = torch.stack([load_view(obj_dir, v, cfg.input_size)[0] for v in inputs])
        with torch.no_grad():
            g = model.reconstruct(images[None], cameras=canon[:4].to(model.device)).to("cpu").float()
        novel = Cameras(canon[4:], manifest.fovy, cfg.output_size, cfg.output_size)
        splat_img = render(g, novel).image[0].permute(0, 3, 1, 2).float().clamp(0, 1).cpu()
        gt_img = torch.stack([load_view(obj_dir, v, cfg.output_size)[0] for v in order[4:]])
        # ground truth in the canonical frame: p -> T inv(pose_0) p, as canonicalize_cameras moves the cameras
        src = sources[obj.id]
        corners = normalize_mesh(load_render_mesh(src.path, src.rotation)).corners.double()
        M = (canon[0] @ torch.linalg.inv(poses[order[0]])).double()
        corners = (corners @ M[:3, :3].T + M[:3, 3]).numpy()
        ref = sample_points(corners, args.points)
        diag = float(np.linalg.norm(ref.max(0) - ref.min(0)))
        row = {"id": obj.id, "splat_vs_gt_psnr": float(np.mean([float(psnr(splat_img[i], gt_img[i]))
                                                                for i in range(len(gt_img))]))}
        centres = g.positions[0][g.opacities[0, :, 0] >= 0.5].double().numpy()
        row["centres"] = geometry(centres, ref, diag)
        t = time.perf_counter()
        ours = extract_mesh(g, device=args.device, **base)
        row["ours_s"] = time.perf_counter() - t
        row["ours"] = geometry(sample_mesh_points(ours, args.points, 1), ref, diag)
        row["ours"]["psnr"], row["ours"]["ssim"], row["ours"]["psnr_gt"] = appearance(ours, novel, splat_img, gt_img)
        row["ours"].update(topology(welded_faces(ours)), faces=ours.num_faces)
        if not args.no_refine:
            from lgm_core.mesh.refine import refine_texture

            t = time.perf_counter()
            refined = refine_texture(ours, g, steps=args.refine, device=args.device)
            row["refined_s"] = row["ours_s"] + time.perf_counter() - t
            row["refined"] = dict(row["ours"])
            row["refined"]["psnr"], row["refined"]["ssim"], row["refined"]["psnr_gt"] = appearance(
                refined, novel, splat_img, gt_img)
        if core is not None:
            sec, v, f, c = run_core(core, g, args.device)
            if len(f):
                cm = Mesh(v * torch.tensor([1.0, -1.0, -1.0]), f, vertex_colors=linear_to_srgb(c))
                row["core_s"] = sec
                row["core"] = geometry(sample_mesh_points(cm, args.points, 2), ref, diag)
                row["core"]["psnr"], row["core"]["ssim"], row["core"]["psnr_gt"] = appearance(cm, novel, splat_img, gt_img)
                row["core"].update(topology(welded_faces(cm)), faces=cm.num_faces)
        if args.analyse:
            pts = splat_depth_points(g, novel)
            row["splat_depth"] = geometry(pts[torch.randperm(len(pts))[: args.points]].double().numpy(), ref, diag)
            variants = {f"level={lv:g}": dict(level=lv) for lv in args.levels}
            extra = {"snap": ("snap", dict(snap=True)), "auto": ("level=auto", dict(level="auto")),
                     "auto_capped": ("level=auto, max_level=0.7", dict(level="auto", max_level=0.7)),
                     "xatlas": ("uv_method=xatlas", dict(uv_method="xatlas")),
                     "torch": ("mc_method=torch, decimation=torch", dict(mc_method="torch", decimation="torch"))}
            variants.update(dict(extra[v] for v in args.variants))
            for name, kw in variants.items():
                t = time.perf_counter()
                used = {}

                def note_level(message, _frac, used=used):
                    if message.startswith("calibrated level "):
                        used["level"] = float(message.split()[2])

                try:
                    m = extract_mesh(g, device=args.device, progress=note_level, **{**base, **kw})
                except (ValueError, ImportError) as exc:
                    print(f"  {name}: {exc}", file=sys.stderr)
                    continue
                key = f"variant {name}"
                if "level" in used:
                    print(f"  {obj.id} {name}: calibrated level {used['level']:.3g}", file=sys.stderr)
                    row[f"{key}_level"] = used["level"]
                row[f"{key}_s"] = time.perf_counter() - t
                row[key] = geometry(sample_mesh_points(m, args.points, 1), ref, diag)
                row[key]["psnr"], row[key]["ssim"], row[key]["psnr_gt"] = appearance(m, novel, splat_img, gt_img)
                row[key].update(topology(welded_faces(m)), faces=m.num_faces)
        rows.append(row)
        o = row["ours"]
        print(f"[{k + 1}/{len(objects)}] {obj.id}: ours F {o['f1']:.3f} CD {o['chamfer']:.4f} PSNR {o['psnr']:.2f} "
              f"({row['ours_s']:.1f} s)" + (f"; core F {row['core']['f1']:.3f} PSNR {row['core']['psnr']:.2f} "
                                            f"({row['core_s']:.1f} s)" if "core" in row else ""), file=sys.stderr)

    def mean(key, field):
        vals = [r[key][field] for r in rows if key in r]
        return float(np.mean(vals)) if vals else float("nan")

    print(f"# demo LGM ({cfg.input_size} px in, {g.num_gaussians if hasattr(g, 'num_gaussians') else g.positions.shape[1]} "
          f"Gaussians), {len(rows)} held-out objects; renders at {cfg.output_size} px, {len(novel)} novel views, on white")
    splat_gt = np.mean([r['splat_vs_gt_psnr'] for r in rows])
    print("| mesher | Chamfer-L1 | F@1% | PSNR vs splat | SSIM vs splat | PSNR vs GT | faces | parts | islands | "
          "boundary edges | non-manifold edges | time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| the Gaussians (centres; renders) | {mean('centres', 'chamfer'):.4f} | {mean('centres', 'f1'):.3f} | | | "
          f"{splat_gt:.2f} dB | | | | | | |")
    if any("splat_depth" in r for r in rows):
        print(f"| the Gaussians' rendered depth (alpha > 0.5, novel views) | {mean('splat_depth', 'chamfer'):.4f} | "
              f"{mean('splat_depth', 'f1'):.3f} (P {mean('splat_depth', 'precision'):.3f} / R "
              f"{mean('splat_depth', 'recall'):.3f}) | | | | | | | | | |")
    keys = [("ours", "lgm_core extract_mesh"), ("refined", f"+ refine_texture (back-projection, {args.refine} Adam steps)"),
            ("core", "core 0.33 SplatToMesh")]
    keys += [(k, f"extract_mesh({k.split(' ', 1)[1]})") for k in dict.fromkeys(k for r in rows for k in r)
             if k.startswith("variant ") and not k.endswith(("_s", "_level"))]
    for key, name in keys:
        if not any(key in r for r in rows):
            continue
        sec = np.mean([r[f"{key}_s"] for r in rows if key in r])
        print(f"| {name} | {mean(key, 'chamfer'):.4f} | {mean(key, 'f1'):.3f} (P {mean(key, 'precision'):.3f} / "
              f"R {mean(key, 'recall'):.3f}) | {mean(key, 'psnr'):.2f} dB | "
              f"{mean(key, 'ssim'):.3f} | {mean(key, 'psnr_gt'):.2f} dB | {mean(key, 'faces'):.0f} | {mean(key, 'parts'):.1f} | {mean(key, 'islands'):.1f} | "
              f"{mean(key, 'boundary'):.1f} | {mean(key, 'nonmanifold'):.1f} | {sec:.1f} s |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
