"""Benchmark and cross-check the splat renderers (lgm_core.render) at LGM scale.

    python benchmarks/bench_render.py --device cpu            # torch backend on this CPU
    python benchmarks/bench_render.py --device cuda [--gsplat-so path/to/gsplat_cuda.so]

Scenes: ``blob`` = :func:`lgm_core.render.scenes.blob_scene` (65,536 Gaussians, LGM ``big`` scale:
unit-ish blob, scales 0.005-0.02, varied opacities); ``ref`` = the reference LGM output
(``shared/ref/lgm_tiny/output.safetensors`` key ``gaussians`` [1,16384,14]). 512x512 views,
fovy 49.1, radius 1.5. GPU timings: CUDA events, median after warm-up; peak memory from
``torch.cuda.max_memory_allocated``. CPU: wall time and process CPU time, peak RSS growth.

``--gsplat-so`` registers a prebuilt gsplat CUDA extension as ``gsplat.csrc`` before gsplat is
imported (a device-side shortcut to skip its one-minute JIT build; the library never does this).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lgm_core.cameras import Cameras  # noqa: E402
from lgm_core.gaussians import Gaussians  # noqa: E402
from lgm_core.runtime import default_device  # noqa: E402

ROWS = []


def row(what, value, note=""):
    ROWS.append((what, value, note))
    print(f"| {what} | {value} | {note} |", flush=True)


def preload_gsplat(path):
    spec = importlib.util.spec_from_file_location("gsplat_cuda", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules["gsplat.csrc"] = mod


def load_ref(path):
    from safetensors.torch import load_file

    return Gaussians.from_lgm_tensor(load_file(str(path))["gaussians"].float())


def cuda_time(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def wall_time(fn, warmup=2, iters=5, sync=True):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_gpu(args):
    from lgm_core.render import gsplat_backend, psnr, render
    from lgm_core.render.common import camera_matrices, prepare_gaussians
    from lgm_core.render.scenes import blob_scene

    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    blob = blob_scene(65536, seed=0, device=dev)
    one = Cameras.orbit(20.0, [30.0], size=512)
    ok = gsplat_backend.available(dev)
    row("gsplat available", ok, gsplat_backend.STATUS.reason)
    if ok:
        inp = prepare_gaussians(blob)
        vm, Ks = camera_matrices(one, dev)
        for packed in (False, True):
            bg = torch.ones(1, 3, device=dev)
            ms = cuda_time(lambda: gsplat_backend.render_views(inp, 0, vm, Ks, 512, 512, near=0.2, backgrounds=bg,
                                                               packed=packed), iters=50)
            row(f"gsplat_backend.render_views() (one rasterization() call), 65,536 G, 1 view 512² "
                f"(packed={packed})", f"{ms:.3f} ms")
        ms = cuda_time(lambda: render(blob, one, backend="gsplat"), iters=50)
        row("render(backend='gsplat'), 65,536 G, 1 view 512² (whole API)", f"{ms:.3f} ms", "goal <= 1 ms")
        cams8 = Cameras.orbit(20.0, [i * 45.0 for i in range(8)], size=512)
        ms = cuda_time(lambda: render(blob, cams8, backend="gsplat"), iters=30)
        row("render(backend='gsplat'), 8 views 512², per view", f"{ms / 8:.3f} ms")

        def turntable_naive():
            cams = Cameras.turntable(180, 0.0, size=512)
            return render(blob, cams, backend="gsplat").image.cpu()

        def turntable():
            cams = Cameras.turntable(180, 0.0, size=512)
            return render(blob, cams, backend="gsplat", out_device="cpu").image

        torch.cuda.synchronize()
        t = time.perf_counter()
        turntable()
        row("180-frame turntable 512² -> CPU float tensors (image+alpha+depth), render(out_device='cpu'), "
            "first call", f"{(time.perf_counter() - t) * 1000:.1f} ms", "includes pinned-memory allocation")
        ms = wall_time(turntable, warmup=2, iters=7)
        row("180-frame turntable 512² -> CPU float tensors, render(out_device='cpu'), warm", f"{ms:.1f} ms",
            "goal <= 250 ms; camera set-up + render + copy, median of 7")
        ms = wall_time(turntable_naive, warmup=1, iters=3)
        row("  for comparison: render on GPU then .image.cpu() (pageable copy)", f"{ms:.1f} ms")
        ms = wall_time(lambda: render(blob, Cameras.turntable(180, 0.0, size=512), backend="gsplat"), 2, 5)
        row("  render only (stays on GPU)", f"{ms:.1f} ms")
        mb = peak_mb(lambda: render(blob, Cameras.turntable(180, 0.0, size=512), backend="gsplat"))
        row("  peak GPU memory of the 180-view render (incl. outputs, 755 MB)", f"{mb:.0f} MB")

    ms = cuda_time(lambda: render(blob, one, backend="torch"), warmup=2, iters=10)
    row("render(backend='torch') on CUDA, 65,536 G, 1 view 512²", f"{ms:.2f} ms", "goal <= 25 ms")
    mb = peak_mb(lambda: render(blob, one, backend="torch"))
    row("  peak GPU memory, torch backend, 1 view", f"{mb:.0f} MB")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            render(blob, one, backend="torch")
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
    cams8 = Cameras.orbit(20.0, [i * 45.0 for i in range(8)], size=512)
    ms = cuda_time(lambda: render(blob, cams8, backend="torch"), warmup=1, iters=5)
    row("render(backend='torch') on CUDA, 8 views per call, per view", f"{ms / 8:.2f} ms")

    # agreement gsplat vs torch
    if ok:
        ref = load_ref(args.ref).to(dev) if args.ref and Path(args.ref).exists() else None
        views = Cameras.orbit([0, 0, 0, 0, 25, 25, -20, 60], [0, 90, 180, 270, 45, 135, 225, 315], size=512)
        scenes = [("blob 65,536", blob)]
        if ref is not None:
            scenes.insert(0, ("reference LGM output (16,384)", ref))
            legacy = Gaussians(ref.positions, ref.scales, ref.rotations * 0.004, ref.opacities, ref.sh,
                               normalized_rotations=False)
            scenes.append(("reference, legacy raw-quaternion path (covars)", legacy))
        for name, g in scenes:
            a = render(g, views, backend="torch")
            b = render(g, views, backend="gsplat")
            p_img = min(psnr(a.image[0, v], b.image[0, v]) for v in range(len(views)))
            p_alpha = min(psnr(a.alpha[0, v], b.alpha[0, v]) for v in range(len(views)))
            row(f"PSNR torch vs gsplat, {name}, 8 views 512² (worst view)", f"{p_img:.1f} dB",
                f"alpha {p_alpha:.1f} dB; goal >= 45 dB")


def bench_cpu(args):
    from lgm_core.render import render
    from lgm_core.render.scenes import blob_scene

    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"cpu threads: {torch.get_num_threads()}, os cpus: {os.cpu_count()}")
    blob = blob_scene(65536, seed=0)
    one = Cameras.orbit(20.0, [30.0], size=512)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    render(blob, one, backend="torch")  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        render(blob, one, backend="torch")
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row("render(backend='torch') on CPU, 65,536 G, 1 view 512², wall", f"{statistics.median(walls):.2f} s",
        f"median of {args.repeats}; goal <= 5 s; {torch.get_num_threads()} threads; "
        f"load average {os.getloadavg()[0]:.1f}")
    row("  process CPU time per view", f"{statistics.median(cpus):.2f} s")
    row("  peak RSS growth while rendering", f"{(rss1 - rss0) / 1024:.0f} MB",
        f"process peak {rss1 / 1024:.0f} MB")
    if args.ref and Path(args.ref).exists():
        ref = load_ref(args.ref)
        w = time.perf_counter()
        render(ref, one, backend="torch")
        row("render(backend='torch') on CPU, reference Gaussians (16,384, large), 1 view 512²",
            f"{time.perf_counter() - w:.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=default_device().type)
    ap.add_argument("--gsplat-so", default=None)
    ap.add_argument("--ref", default=str(REPO.parent / "shared/ref/lgm_tiny/output.safetensors"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print a torch profiler table of one torch-backend view")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    if args.gsplat_so:
        preload_gsplat(args.gsplat_so)
    print("| measurement | value | note |\n|---|---|---|")
    if args.device == "cuda":
        bench_gpu(args)
    else:
        bench_cpu(args)
    if args.out:
        with open(args.out, "w") as f:
            f.write("| measurement | value | note |\n|---|---|---|\n")
            f.writelines(f"| {a} | {b} | {c} |\n" for a, b, c in ROWS)


if __name__ == "__main__":
    main()
