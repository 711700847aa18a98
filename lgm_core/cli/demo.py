"""``python -m lgm_core demo``: the shipped demo model on the shipped example views, offline."""

from __future__ import annotations

import argparse

from . import CLIError, progress


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: shipped model + shipped views -> Gaussians, turntable, mesh, side-by-side image",
        description=(
            "Run the small LGM shipped with this package (lgm_core/assets/demo, trained by this project on "
            "Sweet Home 3D furniture) on 4 shipped views of a held-out object (examples/demo). Writes "
            "gaussians.ply, turntable.mp4, mesh.glb and side_by_side.png (inputs | renders from the same poses | "
            "novel views) to OUTPUT and prints the PSNR of the renders against the inputs. Needs no network."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-o", "--output", default="out/demo", help="output folder")
    p.add_argument("--views", default=None,
                   help="folder with view_000.png, view_090.png, view_180.png, view_270.png "
                        "(default: the shipped example)")
    p.add_argument("--weights", default="demo", help="LGM weights: 'demo', a .safetensors file, a folder or a hub id")
    p.add_argument("--turntable-frames", type=int, default=36, help="turntable frames (0 = no video)")
    p.add_argument("--render-size", type=int, default=256, help="turntable frame size in pixels")
    p.add_argument("--no-mesh", action="store_true", help="skip the mesh extraction")
    p.add_argument("--mesh-resolution", type=int, default=128, help="voxels along the object's longest side")
    p.add_argument("--texture-size", type=int, default=512, help="mesh texture size in pixels")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import run_demo

    if args.turntable_frames < 0 or not 16 <= args.render_size <= 4096:
        raise CLIError("--turntable-frames must be >= 0 and --render-size in 16..4096")
    if not 16 <= args.mesh_resolution <= 1024 or not 16 <= args.texture_size <= 8192:
        raise CLIError("--mesh-resolution must be in 16..1024 and --texture-size in 16..8192")
    result = run_demo(args.output, weights=args.weights, views=args.views, device=args.device,
                      turntable_frames=args.turntable_frames, render_size=args.render_size, mesh=not args.no_mesh,
                      mesh_resolution=args.mesh_resolution, texture_size=args.texture_size, progress=progress)
    progress(f"demo done in {result.seconds:.1f} s")
    for path in (result.ply, result.video, result.mesh, result.sheet):
        if path is not None:
            print(path)
    print(f"PSNR of renders vs input views: {result.psnr_inputs:.2f} dB")
    return 0
