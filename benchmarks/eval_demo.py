#!/usr/bin/env python3
"""Score an LGM (default: the shipped demo model) on the demo's held-out test objects, on the CPU.

The 40 test meshes in ``examples/demo_test_objects`` are rendered with ``prepare-data`` (once, cached in
``--data``; deterministic: same seed, same views) at 128 px: a 16-view ring at elevation 0 — 4 of them are
the inputs, 12 are novel views at the input elevation — and 16 views at elevations +20 and -20 degrees,
which the model never sees as inputs. See :mod:`lgm_core.training.evaluate` for the metrics and the
trivial baseline (the objects' mean silhouette filled with their mean colour).

    python benchmarks/eval_demo.py                      # all 40 objects, prints the table in the model card
    python benchmarks/eval_demo.py --limit 3 --json x.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEST_OBJECTS = REPO / "examples" / "demo_test_objects"
RENDER = dict(views=32, ring=16, size=128, elevations=(20.0, -20.0), seed=0)
"""How the test views are rendered (keep in sync with the model card)."""


def prepare_test_views(data: Path, limit: int = 0, progress=print) -> Path:
    from lgm_core.training.prepare import ViewPlan, prepare_dataset, read_sources_file

    sources = read_sources_file(TEST_OBJECTS / "sources.json")
    if limit:
        sources = sources[:limit]
    plan = ViewPlan(views=RENDER["views"], ring=RENDER["ring"], elevations=RENDER["elevations"], random_elevation=False)
    prepare_dataset(sources, data, plan=plan, size=RENDER["size"], seed=RENDER["seed"], device="cpu",
                    progress=lambda m: None)
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--weights", default="demo", help="LGM weights ('demo', a .safetensors file, ...)")
    ap.add_argument("--data", type=Path, default=REPO / "out" / "demo_test_views",
                    help="where the rendered test views are cached")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test objects (0 = all 40)")
    ap.add_argument("--json", type=Path, default=None, help="also write per-object and summary metrics here")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lgm_core.training import layout
    from lgm_core.training.evaluate import add_baseline, evaluate_objects, format_table, summarize
    from lgm_core.training.prepare import read_sources_file, unique_ids
    from lgm_core.weights import load_lgm

    t0 = time.perf_counter()
    prepare_test_views(args.data, args.limit)
    manifest = layout.DatasetManifest.read(args.data)
    wanted = [s.id for s in unique_ids(read_sources_file(TEST_OBJECTS / "sources.json"))]
    if args.limit:
        wanted = wanted[: args.limit]
    objects = [o for o in manifest.objects if o.id in set(wanted)]
    objects.sort(key=lambda o: wanted.index(o.id))
    print(f"rendered/cached {len(objects)} test objects in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    model = load_lgm(args.weights, device="cpu", dtype=torch.float32)
    results = evaluate_objects(model, args.data, objects, ring=manifest.ring, fovy=manifest.fovy,
                               progress=lambda m: print(m, file=sys.stderr))
    add_baseline(args.data, objects, results, model.config.output_size)
    summary = summarize(results)
    print(f"model: {args.weights}; {len(objects)} held-out objects; views at {model.config.output_size} px on white")
    print(format_table(summary))
    novel = next(s for s in summary if s.name == "novel")
    print(f"novel views: PSNR {novel.psnr:.2f} dB vs baseline {novel.baseline_psnr:.2f} dB "
          f"(+{novel.psnr - novel.baseline_psnr:.2f} dB); SSIM {novel.ssim:.3f}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        from dataclasses import asdict

        args.json.write_text(json.dumps({"weights": args.weights, "render": RENDER,
                                         "summary": [asdict(s) for s in summary],
                                         "objects": [asdict(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
