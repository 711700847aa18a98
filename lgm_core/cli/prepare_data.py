"""``python -m lgm_core prepare-data``: mesh files -> multi-view training dataset (rgb/ + pose/ per object)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import CLIError, progress


def _floats(text: str):
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "prepare-data",
        help="render mesh files into a training dataset (rgb/NNN.png + pose/NNN.txt per object)",
        description=(
            "Render meshes (OBJ+MTL with textures, GLB/GLTF, PLY/OFF/STL with vertex or face colours) into "
            "the LGM training layout: per object rgb/NNN.png (RGBA, white-background-ready straight alpha) and "
            "pose/NNN.txt (camera-to-world, Blender world / OpenCV camera, as the original loader reads), plus "
            "manifest.json (object ids, sources, licences, view angles). Objects are centred and scaled into the "
            "LGM frame (+y up, front +z). Views: a ring of --ring cameras at elevation 0 (input candidates, "
            "90-degree quadruples), then --views minus --ring random views. Runs on CUDA when available. Meshes "
            "that fail are skipped with a reason; objects already complete in OUTPUT are kept, so an interrupted "
            "run continues where it stopped. See docs/training.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("meshes", nargs="*", type=Path,
                   help="mesh files or folders (searched recursively for .obj/.glb/.gltf/.ply/.off/.stl)")
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder (created or continued)")
    p.add_argument("--sources", type=Path, default=None,
                   help="JSON list of {path, id, name, license, author, split, rotation} entries (paths relative "
                        "to the file), e.g. from scripts/sweethome3d_dataset.py")
    p.add_argument("--views", type=int, default=32, help="views per object")
    p.add_argument("--size", type=int, default=512, help="image size in pixels (square)")
    p.add_argument("--ring", type=int, default=16, help="views on the elevation-0 ring (multiple of 4; 0 = none)")
    p.add_argument("--elevations", type=_floats, default=[-20.0, 45.0], metavar="E1,E2,...",
                   help="elevations of the other views in degrees (positive = above): a LOW,HIGH range drawn "
                        "uniformly on the sphere, or fixed values cycled with --fixed-elevations")
    p.add_argument("--fixed-elevations", action="store_true",
                   help="use --elevations as fixed values (cycled) instead of a random range")
    p.add_argument("--object-radius", type=float, default=0.55,
                   help="radius of the object's bounding sphere after normalisation (the camera orbits at 1.5)")
    p.add_argument("--supersample", type=int, default=2, help="anti-aliasing factor (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the camera placement")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def collect_meshes(paths):
    from ..training.prepare import MESH_SUFFIXES, SourceMesh

    out = []
    for p in paths:
        if p.is_dir():
            out += [SourceMesh(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in MESH_SUFFIXES and f.is_file()]
        elif p.is_file():
            out.append(SourceMesh(p))
        else:
            raise FileNotFoundError(f"no such mesh file or folder: {p}")
    return out


def run(args) -> int:
    from ..training.prepare import ViewPlan, prepare_dataset, read_sources_file

    sources = collect_meshes(args.meshes)
    if args.sources:
        if not args.sources.is_file():
            raise FileNotFoundError(f"--sources: no such file: {args.sources}")
        sources += read_sources_file(args.sources)
    if not sources:
        raise CLIError("no meshes given (pass files/folders or --sources FILE)")
    if args.supersample < 1 or args.supersample > 8:
        raise CLIError(f"--supersample must be 1..8, got {args.supersample}")
    if not 0.05 <= args.object_radius <= 1.0:
        raise CLIError(f"--object-radius must be in [0.05, 1.0], got {args.object_radius}")
    plan = ViewPlan(views=args.views, ring=args.ring, elevations=args.elevations,
                    random_elevation=not args.fixed_elevations)
    import torch

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    progress(f"rendering {len(sources)} meshes x {args.views} views at {args.size}px on {device} -> {args.output}")
    report = prepare_dataset(sources, args.output, plan=plan, size=args.size, object_radius=args.object_radius,
                             supersample=args.supersample, seed=args.seed, device=device, progress=progress)
    progress(f"done in {report.seconds:.0f} s: {report.written} objects written, {report.kept} already complete, "
             f"{len(report.skipped)} skipped")
    print(Path(args.output))
    return 0 if report.written + report.kept > 0 else 1
