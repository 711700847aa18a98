#!/usr/bin/env python3
"""Render the demo's example views (examples/demo/view_000.png ... view_270.png) from one held-out test
object: 4 views at elevation 0, azimuths 0/90/180/270 (LGM's input order), 256 px, RGBA, with the same
normalisation and shading as prepare-data. Usage: python scripts/make_demo_example.py [OBJECT_ID]"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from lgm_core.cameras import Cameras
    from lgm_core.demo import EXAMPLE_DIR, VIEW_FILES
    from lgm_core.training.prepare import load_render_mesh, normalize_mesh, render_mesh_views
    from lgm_core.image_io import write_image

    argv = sys.argv[1:] if argv is None else argv
    object_id = argv[0] if argv else "Scopia_armchair1"
    test = REPO / "examples" / "demo_test_objects"
    entry = next(e for e in json.loads((test / "sources.json").read_text()) if e["id"] == object_id)
    mesh = normalize_mesh(load_render_mesh(test / entry["path"]))
    rgb, alpha = render_mesh_views(mesh, Cameras.orbit(0.0, [0.0, 90.0, 180.0, 270.0], size=256), supersample=2)
    EXAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(VIEW_FILES):
        write_image(torch.cat([rgb[i], alpha[i, ..., None]], -1), EXAMPLE_DIR / name)
    (EXAMPLE_DIR / "LICENSE.txt").write_text(
        f"The four views in this folder are renders (by scripts/make_demo_example.py) of the 3D model\n"
        f"\"{entry['name']}\" by {entry['author']}, from the Sweet Home 3D furniture catalogue {entry['catalogue']}\n"
        f"(Debian package sweethome3d-furniture), licence {entry['license']}.\n"
        "The renders are released under the same licence. The model is a held-out test object of the demo LGM:\n"
        "it was never used to train or validate it.\n")
    print(f"wrote {', '.join(VIEW_FILES)} to {EXAMPLE_DIR} ({entry['name']}, {entry['license']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
