#!/usr/bin/env python3
"""Stage-by-stage profile of ``extract_mesh`` (textured GLB included), side by side with ComfyUI
core 0.33's ``SplatToMesh`` on the same splats; prints one table.

Scene: ``lgm_core.render.scenes.blob_scene(N)`` (LGM-like: 65,536 Gaussians by default). Stages are
timed through ``extract_mesh``'s progress callback (wall clock between reports; on CUDA the callback
synchronises the device first, so each stage is charged its own GPU work). Core's mesher is imported from a ComfyUI 0.33 tree (``--comfyui``) and run in this
process on the same Gaussians (its ``_gaussian_to_mesh``, defaults of the node: resolution 384,
kernel 5, level 0.4, min_component 500, min_opacity 0.02, colour_sharpen 2); its heavy ComfyUI
imports happen before timing. Wall time, process CPU time and the load average are printed, since
the 2-core CPU here is shared.

    python benchmarks/mesh_profile.py --quick                           # CPU smoke run (~1 min): small scene, all
                                                                        # PyTorch stages and the CPU defaults
    python benchmarks/mesh_profile.py                                   # CPU, ours only
    python benchmarks/mesh_profile.py --comfyui .comfyui/0.33.0/ComfyUI  # + core (run with its venv's python)
    # the H200 run (core's one file carried in an ignored folder; the tarball is ../shared/comfyui/):
    mkdir -p .device/core && tar -xzf ../shared/comfyui/comfyui-0.33.0.tar.gz -C .device/core --strip-components=2 \
        ComfyUI-0.33.0/comfy_extras/nodes_gaussian_splat.py
    run(carry=[".device/core"]): python benchmarks/mesh_profile.py --device cuda --repeats 3 \
        --comfyui .device/core/nodes_gaussian_splat.py

Each ``--variant`` (default: the device's defaults only) is one row set of ``extract_mesh`` stage
backends, e.g. ``--variant auto --variant uv_method=xatlas``; a variant whose backend is not installed
is reported as skipped, so the GPU run needs none of scikit-image, fast-simplification, xatlas, SciPy.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def import_core_file(path: Path, device: str):
    """Core's ``nodes_gaussian_splat.py`` alone (no ComfyUI install, e.g. on the device machine):
    loaded with inert stand-ins for the ComfyUI modules it imports; only its mesher is used."""
    import importlib.util
    import types

    import torch

    class Anything:
        def __getattr__(self, name):
            return Anything()

        def __call__(self, *a, **k):
            return Anything()

    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device(device)
    mm.is_device_cpu = lambda d: torch.device(d).type == "cpu"
    mm.get_free_memory = lambda d=None: (torch.cuda.mem_get_info()[0] if torch.device(d or device).type == "cuda"
                                         else 1 << 40)
    api = types.ModuleType("comfy_api.latest")
    api.ComfyExtension = type("ComfyExtension", (), {})
    api.IO, api.Types = Anything(), Anything()
    api.IO.ComfyNode = type("ComfyNode", (), {})  # a real class: core's nodes subclass it
    save3d = types.ModuleType("comfy_extras.nodes_save_3d")
    save3d.pack_variable_mesh_batch = lambda *a, **k: None
    server = types.ModuleType("server")
    server.PromptServer = Anything()
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, types.ModuleType("comfy.utils")
    for name, mod in {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": comfy.utils,
                      "comfy_api": types.ModuleType("comfy_api"), "comfy_api.latest": api,
                      "comfy_extras": types.ModuleType("comfy_extras"), "comfy_extras.nodes_save_3d": save3d,
                      "server": server}.items():
        sys.modules.setdefault(name, mod)
    spec = importlib.util.spec_from_file_location("core_nodes_gaussian_splat", path)
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    return core


def import_core(comfyui: Path, device: str):
    """comfy_extras.nodes_gaussian_splat from a ComfyUI tree (or, given the .py file itself,
    :func:`import_core_file`), set up for ``device``."""
    if comfyui.suffix == ".py":
        return import_core_file(comfyui, device)
    sys.path.insert(0, str(comfyui))
    argv = sys.argv
    sys.argv = [argv[0]] + (["--cpu"] if device == "cpu" else [])
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy_extras.nodes_gaussian_splat as core
    finally:
        sys.argv = argv
    return core


class CoreSplat:
    """The fields of core's SPLAT that ``_gaussian_to_mesh`` reads, from lgm_core Gaussians."""

    def __init__(self, g):
        C0 = 0.28209479177387814
        self.positions, self.scales, self.rotations = g.positions, g.scales, g.rotations
        self.opacities = g.opacities
        self.sh = ((g.rgb - 0.5) / C0)[:, :, None, :]
        self.counts = None


def run_core(core, g, device):
    """Core SplatToMesh at its node defaults -> (seconds, vertices, faces)."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    v, f, c = core._gaussian_to_mesh(CoreSplat(g), 0, 384, 5, 0, 0.4, 500, 0.02, 2.0, torch.device(device))
    sync()
    return time.perf_counter() - t, v, f, c


def profile_ours(g, device, **kw):
    """(stage rows [(name, seconds)], total seconds, cpu seconds, mesh)."""
    import torch

    from lgm_core.mesh import extract_mesh

    rows = []
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    c0, t0 = time.process_time(), time.perf_counter()
    last = [t0, "checks, stray filter (to the device)"]
    names = {"splatting": "splat density + colour fields", "filling": "fill enclosed space",
             "marching cubes:": "decimation", "marching cubes": "marching cubes + components",
             "decimated": "repair, orient, normals, vertex colours", "no decimation": "repair, orient, normals, vertex colours", "UV": "UV atlas",
             "baking": "texture bake", "done": "to CPU",
             "calibrating": "level calibration (renders)", "calibrated": "level calibration (renders)"}

    def progress(message, frac):
        sync()  # charge each stage's queued GPU work to that stage
        now = time.perf_counter()
        if rows and rows[-1][0] == last[1]:  # one stage reported twice (start and result)
            rows[-1] = (last[1], rows[-1][1] + now - last[0])
        else:
            rows.append((last[1], now - last[0]))
        label = next((v for k, v in names.items() if message.startswith(k)), message.split(" (")[0])
        last[0], last[1] = now, label

    mesh = extract_mesh(g, device=device, progress=progress, **kw)
    sync()
    now = time.perf_counter()
    rows.append((last[1], now - last[0]))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        mesh.export(Path(tmp) / "m.glb")
        rows.append(("GLB export", time.perf_counter() - t))
    return rows, time.perf_counter() - t0, time.process_time() - c0, mesh


def parse_variant(text: str) -> dict:
    """"auto" -> {}; "mc_method=torch,uv_method=xatlas,level=0.6" -> keyword arguments of extract_mesh
    (integers, floats, True/False/None as such)."""
    if text == "auto":
        return {}

    def value(v: str):
        if v in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[v]
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    return {k: value(v) for k, v in (item.split("=", 1) for item in text.split(","))}


def missing_backend(device: str, kw: dict):
    """The module a variant needs but this machine lacks, else None."""
    import importlib.util

    from lgm_core.mesh.extract import resolve_methods

    mc, dec, uv = resolve_methods(device, kw.get("mc_method", "auto"), kw.get("decimation", "auto"),
                                  kw.get("uv_method", "auto"))
    for module, used in (("skimage", mc == "skimage"), ("fast_simplification", dec == "fast_simplification"),
                         ("xatlas", uv == "xatlas")):
        if used and importlib.util.find_spec(module) is None:
            return module
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=65536, help="Gaussians in the blob scene")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of ours (after one warm-up on CUDA)")
    ap.add_argument("--comfyui", type=Path, default=None,
                    help="a ComfyUI 0.33 tree, or its comfy_extras/nodes_gaussian_splat.py alone: also time core's "
                         "SplatToMesh")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--resolution", type=int, default=None, help="grid resolution (default: the device's default)")
    ap.add_argument("--variant", action="append", default=None,
                    help="stage backends, e.g. 'auto' or 'mc_method=torch,decimation=torch,uv_method=charts' (repeatable)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8,192 Gaussians at resolution 96, the defaults and the all-PyTorch variant")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from lgm_core.mesh.extract import default_resolution, resolve_methods
    from lgm_core.render.scenes import blob_scene

    if args.quick:
        args.n, args.resolution = min(args.n, 8192), args.resolution or 96
        args.variant = args.variant or ["auto", "mc_method=torch,decimation=torch,uv_method=charts"]
    variants = args.variant or ["auto"]
    core = import_core(args.comfyui, args.device) if args.comfyui else None
    g = blob_scene(args.n, device=args.device)
    res = args.resolution or default_resolution(args.device)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {dev}; torch {torch.__version__}; blob_scene({args.n}); load average "
          f"{os.getloadavg()[0]:.1f}; resolution {res}, 50k faces, textured GLB")
    summary = []
    for text in variants:
        kw = parse_variant(text)
        kw["resolution"] = res
        lacking = missing_backend(args.device, kw)
        methods = resolve_methods(args.device, kw.get("mc_method", "auto"), kw.get("decimation", "auto"),
                                  kw.get("uv_method", "auto"))
        label = f"{text} (mc {methods[0]}, decimation {methods[1]}, uv {methods[2]})"
        if lacking:
            print(f"\n{label}: skipped, {lacking} is not installed")
            continue
        if args.device == "cuda":
            profile_ours(g, "cuda", **kw)  # warm-up: CUDA context, kernels, imports
            torch.cuda.reset_peak_memory_stats()
        runs = [profile_ours(g, args.device, **kw) for _ in range(args.repeats)]
        rows, total, cpu, mesh = min(runs, key=lambda r: r[1])
        peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU" if args.device == "cuda" else
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)")
        print(f"\n{label}\n\n| stage | s |\n|---|---|")
        for name, sec in rows:
            print(f"| {name} | {sec:.2f} |")
        print(f"| **total (best of {len(runs)})** | **{total:.2f}** (process CPU {cpu:.1f} s) |")
        summary.append((f"lgm_core extract_mesh + GLB, {text}", total, mesh, peak))
    print(f"\n| mesher | time (s) | vertices | faces | peak memory |\n|---|---|---|---|---|")
    for name, total, mesh, peak in summary:
        print(f"| {name} | {total:.2f} | {mesh.num_vertices} | {mesh.num_faces} | {peak} |")
    if core is not None:
        if args.device == "cuda":
            run_core(core, g, "cuda")
        sec, v, f, _ = run_core(core, g, args.device)
        print(f"| core 0.33 SplatToMesh (vertex colours, no file) | {sec:.2f} | {v.shape[0]} | {f.shape[0]} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
