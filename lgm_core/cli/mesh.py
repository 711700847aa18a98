"""``python -m lgm_core mesh``: Gaussians .ply -> textured mesh (.glb, .obj + .mtl + .png, .ply)."""

from __future__ import annotations

from pathlib import Path

from . import CLIError, progress
from ..mesh.extract import DEFAULT_LEVEL
from .common import HelpFormatter, StageProgress, add_device_argument, resolve_device


def _level(text: str):
    """--level: a number, or 'auto'."""
    return text if text == "auto" else float(text)


def register(sub) -> None:
    p = sub.add_parser(
        "mesh",
        help="Gaussians .ply -> textured mesh (.glb/.obj/.ply)",
        description=(
            "Extract a textured triangle mesh from 3D Gaussians: density field -> marching cubes -> significant "
            "parts -> decimation -> UV charts -> texture baked from the Gaussians' colours. "
            "Runs on CUDA when available, else on the CPU. The mesh stays in the Gaussians' frame (LGM's frame "
            "is already glTF's: +y up, front on +z)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", help="Gaussians .ply (LGM's or any 3DGS .ply)")
    p.add_argument("-o", "--output", default=None,
                   help="output mesh: .glb, .obj (writes .mtl + .png beside it) or .ply (vertex colours); "
                        "default: the input's name with .glb")
    p.add_argument("--resolution", type=int, default=None,
                   help="voxels along the longest side of the object (default: 256 on CUDA, 192 on the CPU)")
    p.add_argument("--target-faces", type=int, default=50_000, help="upper bound on the face count")
    p.add_argument("--texture-size", type=int, default=1024, help="side of the square texture in pixels")
    p.add_argument("--no-texture", action="store_true", help="vertex colours only (no UVs, no texture image)")
    p.add_argument("--level", type=_level, default=DEFAULT_LEVEL,
                   help="iso-level of the opacity density (1 = peak of one opaque Gaussian); lower = fatter; "
                        "'auto' = calibrated on the splat's rendered depth")
    p.add_argument("--max-level", type=float, default=None,
                   help="with --level auto: never above this level (it also stands in when the splat is too faint "
                        "to calibrate on)")
    p.add_argument("--keep-components", type=float, default=0.02, metavar="RATIO",
                   help="keep every connected part with at least RATIO x the largest one's area (0 keeps all)")
    p.add_argument("--largest-only", action="store_true", help="keep only the largest connected part")
    p.add_argument("--unlit", action="store_true",
                   help=".glb: mark the material KHR_materials_unlit (viewers show the colours flat, like the splat)")
    p.add_argument("--snap", action="store_true",
                   help="move the surface onto the Gaussian centres (truer geometry, thinner look)")
    p.add_argument("--flip-yz", action="store_true",
                   help="output (x, -y, -z): for Gaussians in the y-down 3DGS/COLMAP convention (not for LGM's)")
    p.add_argument("--min-opacity", type=float, default=0.005, help="ignore Gaussians below this opacity")
    p.add_argument("--keep-clamped", action="store_true",
                   help="keep Gaussians piled on LGM's position clamp (a centre at +-1; ignored by default)")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..ply import load_ply
    from ..mesh import extract_mesh
    from ..mesh.extract import check_arguments

    try:  # before the (possibly slow) load, in the flags' own words
        check_arguments(256 if args.resolution is None else args.resolution, args.target_faces, args.texture_size, args.level, args.min_opacity,
                        args.keep_components, args.max_level)
    except ValueError as exc:
        flag = {"resolution": "--resolution", "target_faces": "--target-faces", "texture_size": "--texture-size",
                "level": "--level", "min_opacity": "--min-opacity", "component_ratio": "--keep-components",
                "max_level": "--max-level"}
        name = str(exc).split(" ", 1)[0]
        raise CLIError(f"{flag.get(name, name)}{str(exc)[len(name):]}") from None
    src = Path(args.input)
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    out = Path(args.output) if args.output else src.with_suffix(".glb")
    if out.suffix.lower() not in (".glb", ".obj", ".ply"):
        raise CLIError(f"output must end in .glb, .obj or .ply, got {out.name!r}")
    if out.resolve() == src.resolve():
        raise CLIError("the output would overwrite the input .ply: choose another -o")
    device = resolve_device(args.device)
    progress(f"loading {src}")
    g = load_ply(src)
    bar = StageProgress("mesh", 100, "%")
    mesh = extract_mesh(
        g,
        resolution=args.resolution,
        target_faces=args.target_faces,
        texture_size=args.texture_size,
        texture=not args.no_texture,
        device=device,
        progress=lambda msg, frac: bar.update(round(100 * frac), msg),
        level=args.level,
        max_level=args.max_level,
        min_opacity=args.min_opacity,
        component_ratio=None if args.largest_only else args.keep_components,
        snap=args.snap,
        flip_yz=args.flip_yz,
        keep_clamped=args.keep_clamped,
    )
    mesh.export(out, unlit=args.unlit)
    progress(f"wrote {out} ({mesh.num_vertices} vertices, {mesh.num_faces} faces)")
    return 0
