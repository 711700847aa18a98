"""Where LGM ``big``'s fp16 batch-1 time goes on a GPU, and what each compiler setting buys (issue 15).

One process, random weights (bench_lgm's init), input [B, 4, 9, 256, 256]; every row in try/except
under one time budget (rows that no longer fit are skipped with a note):

1. eager, contiguous vs channels-last, cuDNN benchmark off/on, each also under CUDA graphs;
2. a kernel profile (``torch.profiler``, CUDA time per kernel family) of the fastest eager mode and of
   the compiled one;
3. ``torch.compile`` settings (default; ``freezing``; ``max-autotune-no-cudagraphs``), each wrapped in
   our CUDA-graph runner, with compile seconds;
4. AOTInductor: export + ``aoti_compile_and_package`` seconds, package size, a fresh process's
   load-to-first-output seconds and its median ms;
5. ``fused-norm``: the fused Triton GroupNorm+SiLU (lgm_core/models/fused_norm.py) on vs off, eager
   and + CUDA graphs, channels-last and contiguous, batch 1 and 4, max|d| vs the fp32 model and vs torch's kernels, a
   kernel profile with it on, every GroupNorm call of one forward timed alone (torch vs fused), and
   first-call seconds of fresh processes with an empty Triton cache (JIT) and with that cache filled.

Rows 1-4 (and their reference output) run with the fused GroupNorm off, as measured before it existed.

Prints markdown tables; ``--json`` writes the rows. Usage on the device (about 6-9 min):
    python benchmarks/probe_lgm_kernels.py --out $OUT
The fused-norm section alone (about 1 min):
    python benchmarks/probe_lgm_kernels.py --skip eager,profile,compile,aot,freezing,autotune --out $OUT
CPU smoke (tiny config, no profile of CUDA kernels): python benchmarks/probe_lgm_kernels.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_lgm import build, timed  # noqa: E402
from lgm_core.models import unet as unet_module  # noqa: E402
from lgm_core.models.lgm import LGMConfig  # noqa: E402
from lgm_core.runtime import CUDAGraphRunner  # noqa: E402

QUICK = dict(down_channels=(32, 64), down_attention=(False, True), up_channels=(64,),
             up_attention=(True,), splat_size=16, input_size=32, output_size=32)


def family(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("_partial_stats", "_finalize", "_apply", "_group_norm_one_pass")):  # fused_norm.py
        return "fused GroupNorm+SiLU (Triton)"
    if n.startswith("_geglu"):
        return "fused GEGLU (Triton)"
    if any(k in n for k in ("flash", "fmha", "attention", "mem_eff", "sdpa")):  # before cuDNN: its SDPA kernels
        return "attention"
    if any(k in n for k in ("conv", "cudnn", "implicit", "dgrad", "fprop", "xmma", "sm90_xmma")):
        return "convolution"
    if any(k in n for k in ("gemm", "cutlass", "cublas", "nvjet", "matmul")):
        return "gemm"
    if "group_norm" in n or "groupnorm" in n or "welford" in n or "red_fused" in n or "per_fused" in n:
        return "norm / reduction (fused)"
    if "triton" in n:
        return "triton pointwise"
    if "elementwise" in n or "vectorized" in n or "unrolled" in n:
        return "eager pointwise"
    if "copy" in n or "memcpy" in n or "nchw" in n or "nhwc" in n:
        return "layout / copy"
    return "other"


def kernel_profile(fn, steps=5, top_n=15, width=90):
    """GPU ms per call by kernel family, and the ``top_n`` kernels (ms, calls, name cut to ``width``)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    fam, top = defaultdict(float), []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        if t <= 0 or e.key.startswith("ProfilerStep"):
            continue
        fam[family(e.key)] += t / steps / 1000
        top.append((t / steps / 1000, e.count // steps, e.key[:width]))
    top.sort(reverse=True)
    return dict(sorted(fam.items(), key=lambda kv: -kv[1])), top[:top_n]


FIRST_CALL = r"""
import sys, time
t0 = time.perf_counter()
import torch
sys.path[:0] = [{repo!r}, {bench!r}]
from lgm_core.models.lgm import LGM, LGMConfig
dev = {device!r}
with torch.device("meta"):
    model = LGM({cfg})
model = model.to_empty(device=dev).to(torch.float16 if dev == "cuda" else torch.float32)
with torch.no_grad():  # any finite weights: this process times the first call only (init on the device is fast)
    for p in model.parameters():
        p.normal_(0.0, 0.02)
model = model.eval().requires_grad_(False).use_channels_last()
x = torch.randn(1, 4, 9, model.config.input_size, model.config.input_size, device=dev)
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
sync()
t1 = time.perf_counter()
with torch.no_grad():
    model._forward_gaussians(x); sync(); t2 = time.perf_counter()
    model._forward_gaussians(x); sync(); t3 = time.perf_counter()
print("FIRSTCALL", t2 - t1, t3 - t2, t2 - t0)
"""


AOT_LOAD = r"""
import sys, time, torch
t0 = time.perf_counter()
sys.path[:0] = [{repo!r}, {bench!r}]
from bench_lgm import build, timed
from lgm_core.models.lgm import LGMConfig
cfg = {cfg}
dev = {device!r}
model = build(cfg, dev, torch.float16 if dev == "cuda" else torch.float32).use_channels_last()
x = torch.randn({shape}, device=dev)
t1 = time.perf_counter()
pkg = torch._inductor.aoti_load_package({path!r})
sd = {{'m.' + k: v for k, v in model.state_dict().items()}}
consts = {{k: sd[k] for k in pkg.get_constant_fqns()}}
if {external}:
    pkg.load_constants(consts, check_full_update=True, user_managed=True)
with torch.no_grad():
    out = pkg(x)
    if dev == "cuda": torch.cuda.synchronize()
    t2 = time.perf_counter()
    ms, peak, _ = timed(lambda: pkg(x), 30, 5, dev)
print("AOTRESULT", t2 - t1, t2 - t0, ms)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=520.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip", default="",
                    help="comma list of sections to skip: eager,profile,compile,freezing,autotune,aot,fused-norm")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    t_start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - t_start)  # noqa: E731
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    cfg = LGMConfig(**QUICK) if args.quick else LGMConfig.preset("big")
    cfg_src = f"LGMConfig(**{QUICK!r})" if args.quick else "LGMConfig.preset('big')"
    iters, warm = (5, 1) if args.quick else (50, 10)
    rows, notes = [], []
    if device == "cuda":
        notes.append(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")

    def add(**r):
        rows.append(r)
        print("ROW", json.dumps(r, default=str), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            Path(args.out, "probe_lgm_kernels.json").write_text(json.dumps(rows, indent=1, default=str))

    def attempt(name, cost, fn):
        if name.split(":")[0] in skip:
            return
        if left() < cost:
            notes.append(f"{name}: skipped ({left():.0f} s left, needs ~{cost:.0f} s)")
            return
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            add(section=name, error=f"{type(e).__name__}: {str(e)[:300]}")
        print(f"[probe] {name} took {time.perf_counter() - t:.1f} s; {left():.0f} s left", flush=True)

    fused_default = unet_module.FUSED_GROUPNORM
    unet_module.FUSED_GROUPNORM = False  # sections 1-4 as measured before the fused GroupNorm
    model = build(cfg, device, dtype)
    xs = {b: torch.randn(b, 4, 9, cfg.input_size, cfg.input_size, device=device) for b in (1, 4)}
    with torch.no_grad():
        ref = {b: model._forward_gaussians(xs[b]).float() for b in xs}

    def err(out, b):
        return float((out.float() - ref[b]).abs().max())

    # 1. eager variants
    def eager():
        for cl in (False, True):
            model.use_channels_last(cl)
            for bench in (False, True):
                torch.backends.cudnn.benchmark = bench
                for b in (1, 4):
                    with torch.no_grad():
                        ms, peak, out = timed(lambda: model._forward_gaussians(xs[b]), iters, warm, device)
                        runner = CUDAGraphRunner(model._forward_gaussians, weights=model)
                        gms, gpeak, gout = timed(lambda: runner(xs[b]), iters, warm, device)
                    add(section="eager", batch=b, channels_last=cl, cudnn_benchmark=bench, ms=ms,
                        graphs_ms=gms, peak_gb=gpeak, max_err=err(gout, b))
                    del runner
        torch.backends.cudnn.benchmark = False
        model.use_channels_last(True)

    attempt("eager", 60, eager)

    def profile_eager():
        if device != "cuda":
            return
        model.use_channels_last(True)
        runner = CUDAGraphRunner(model._forward_gaussians, weights=model)
        with torch.no_grad():
            fam, top = kernel_profile(lambda: model._forward_gaussians(xs[1]))
        add(section="profile", mode="eager channels-last b1", families=fam, top=top)

    attempt("profile", 20, profile_eager)

    # 3. torch.compile variants
    def compiled(label, mode=None, freezing=False, batches=(1, 4)):
        def run():
            import torch._dynamo
            import torch._inductor.config as ic

            torch._dynamo.reset()
            ic.freezing = freezing
            model.use_channels_last(True)
            fn = torch.compile(model._forward_gaussians, mode=mode, dynamic=False)
            for b in batches:
                t = time.perf_counter()
                with torch.no_grad():
                    out = fn(xs[b])
                    if device == "cuda":
                        torch.cuda.synchronize()
                    first = time.perf_counter() - t
                    ms, peak, out = timed(lambda: fn(xs[b]), iters, warm, device)
                    runner = CUDAGraphRunner(fn, weights=model)
                    gms, gpeak, gout = timed(lambda: runner(xs[b]), iters, warm, device)
                add(section="compile", setting=label, batch=b, compile_s=first, ms=ms, graphs_ms=gms,
                    peak_gb=gpeak, max_err=err(gout, b))
                if b == 1 and device == "cuda" and label == "default":
                    with torch.no_grad():
                        fam, top = kernel_profile(lambda: runner(xs[1]))
                    add(section="profile", mode="compiled default + graphs b1", families=fam, top=top)
                del runner
            ic.freezing = False
        return run

    attempt("compile:default", 120, compiled("default"))

    # 4. AOTInductor
    def aot():
        import torch._inductor.config as ic

        model.use_channels_last(True)
        tmp = Path(tempfile.mkdtemp(prefix="lgm_aot_"))

        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m._forward_gaussians(x)

        for external in (True,):
            path = tmp / f"lgm_b1_ext{int(external)}.pt2"
            t = time.perf_counter()
            with torch.no_grad():
                ep = torch.export.export(Wrap(model), (xs[1],), strict=False)
            t_export = time.perf_counter() - t
            opts = {"aot_inductor.package_constants_in_so": not external} if external else {}
            t = time.perf_counter()
            torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=opts)
            t_build = time.perf_counter() - t
            size = path.stat().st_size / 2**20
            code = AOT_LOAD.format(repo=str(REPO), bench=str(REPO / "benchmarks"), cfg=cfg_src,
                                   shape=tuple(xs[1].shape), path=str(path), external=external, device=device)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=max(30, left() - 5))
            line = [l for l in res.stdout.splitlines() if l.startswith("AOTRESULT")]
            if not line:
                add(section="aot", external_weights=external, build_s=t_build, package_mb=size,
                    error=f"fresh process rc {res.returncode}; stdout {res.stdout[-400:]!r}; stderr {res.stderr[-1500:]!r}")
                load_s = start_s = ms = float("nan")
            else:
                load_s, start_s, ms = map(float, line[0].split()[1:])
            # in this process: the package under our graph runner
            pkg = torch._inductor.aoti_load_package(str(path))
            if external:
                sd = dict(Wrap(model).state_dict())
                pkg.load_constants({k: sd[k] for k in pkg.get_constant_fqns()}, check_full_update=True, user_managed=True)
            with torch.no_grad():
                out = pkg(xs[1])
                e = err(out, 1)
                pms, _, _ = timed(lambda: pkg(xs[1]), iters, warm, device)
                try:
                    runner = CUDAGraphRunner(pkg, weights=model)
                    gms, gpeak, gout = timed(lambda: runner(xs[1]), iters, warm, device)
                    gerr = err(gout, 1)
                except Exception as ex:  # noqa: BLE001
                    gms, gpeak, gerr = f"failed: {type(ex).__name__}: {str(ex)[:120]}", None, None
            add(section="aot", external_weights=external, export_s=t_export, build_s=t_build, package_mb=size,
                fresh_load_s=load_s, fresh_start_s=start_s, fresh_ms=ms, in_process_ms=pms, max_err=e, graphs_ms=gms,
                graphs_peak_gb=gpeak, graphs_err=gerr)

    attempt("aot", 150, aot)
    attempt("freezing", 120, compiled("freezing", freezing=True))
    attempt("autotune", 150, compiled("max-autotune-no-cudagraphs", mode="max-autotune-no-cudagraphs", batches=(1,)))

    # 5. fused Triton GroupNorm+SiLU on vs off (eager, + CUDA graphs; both layouts)
    def fused_norm():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        ref32_model = build(cfg, device, torch.float32)  # same random weights as `model`
        with torch.no_grad():
            ref32 = {b: ref32_model._forward_gaussians(xs[b]).float() for b in xs}
        del ref32_model
        if device == "cuda":
            torch.cuda.empty_cache()
        torch_out = {}
        for cl, fused in ((True, False), (True, True), (False, False), (False, True)):
            model.use_channels_last(cl)
            unet_module.FUSED_GROUPNORM = fused
            for b in (1, 4):
                with torch.no_grad():
                    ms, peak, out = timed(lambda: model._forward_gaussians(xs[b]), iters, warm, device)
                    runner = CUDAGraphRunner(model._forward_gaussians, weights=model)
                    gms, gpeak, gout = timed(lambda: runner(xs[b]), iters, warm, device)
                del runner
                if not fused:
                    torch_out[b] = gout.float()
                add(section="fused-norm", channels_last=cl, fused=fused, batch=b, ms=ms, graphs_ms=gms, peak_gb=gpeak,
                    err_fp32=float((gout.float() - ref32[b]).abs().max()),
                    err_eager_fp32=float((out.float() - ref32[b]).abs().max()),
                    err_torch_kernels=float((gout.float() - torch_out[b]).abs().max()))
        if device == "cuda":
            model.use_channels_last(True)
            with torch.no_grad():
                fam, top = kernel_profile(lambda: model._forward_gaussians(xs[1]))
            add(section="profile", mode="eager channels-last b1, fused GroupNorm+SiLU", families=fam, top=top)
        norm_shapes(b=1)
        cache = tempfile.mkdtemp(prefix="lgm_triton_cache_")
        for label, fused in (("torch kernels", "0"), ("fused, empty Triton cache", "1"), ("fused, cache filled", "1")):
            code = FIRST_CALL.format(repo=str(REPO), bench=str(REPO / "benchmarks"), cfg=cfg_src, device=device)
            env = dict(os.environ, LGM_FUSED_NORM=fused, TRITON_CACHE_DIR=cache)
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 timeout=max(30, left() - 5))
            line = [l for l in res.stdout.splitlines() if l.startswith("FIRSTCALL")]
            if not line:
                add(section="fused-norm-first", mode=label, error=f"rc {res.returncode}: {res.stderr[-800:]!r}")
                continue
            first, second, start = map(float, line[0].split()[1:])
            add(section="fused-norm-first", mode=label, first_call_s=first, second_call_s=second,
                start_to_ready_s=start)
        unet_module.FUSED_GROUPNORM = fused_default

    def norm_shapes(b):
        """Every GroupNorm call of one channels-last forward, timed alone: torch (group_norm, then silu)
        vs the fused kernels; summed over the forward's calls."""
        from lgm_core.models.unet import GroupNorm32

        calls, real = [], GroupNorm32.forward

        def record(self, x, silu=False):
            calls.append((self, x.clone(), silu))
            return real(self, x, silu)

        model.use_channels_last(True)
        GroupNorm32.forward = record
        try:
            with torch.no_grad():
                model._forward_gaussians(xs[b])
        finally:
            GroupNorm32.forward = real
        per_shape = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
        with torch.no_grad():
            for gn, x, silu in calls:
                outs = []
                for fused in (False, True):
                    unet_module.FUSED_GROUPNORM = fused
                    ms, _, out = timed(lambda: gn(x, silu=silu), 20, 3, device)
                    outs.append(out)
                    per_shape[(tuple(x.shape), silu)][1 + fused] += ms
                per_shape[(tuple(x.shape), silu)][0] += 1
                d = float((outs[0].float() - outs[1].float()).abs().max())
                per_shape[(tuple(x.shape), silu)][3] = max(per_shape[(tuple(x.shape), silu)][3], d)
        for (shape, silu), (n, t_torch, t_fused, d) in sorted(per_shape.items(), key=lambda kv: -kv[1][1]):
            add(section="norm-shape", shape=shape, silu=silu, calls=n, torch_ms=t_torch, fused_ms=t_fused,
                max_d=d)
        add(section="norm-total", calls=len(calls), torch_ms=sum(v[1] for v in per_shape.values()),
            fused_ms=sum(v[2] for v in per_shape.values()))

    attempt("fused-norm", 60, fused_norm)

    # report
    lines = ["# LGM big kernel probe" + (" (quick, CPU)" if args.quick else ""), ""] + [f"- {n}" for n in notes]
    lines += ["", "| section | setting | batch | ms | + CUDA graphs ms | peak GB | compile s | max err |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] in ("eager", "compile"):
            setting = r.get("setting") or f"channels_last={r['channels_last']} cudnn.benchmark={r['cudnn_benchmark']}"
            lines.append(f"| {r['section']} | {setting} | {r['batch']} | {r['ms']:.2f} | {r['graphs_ms']:.2f} | "
                         f"{r['peak_gb']:.3f} | {r.get('compile_s', 0):.1f} | {r['max_err']:.3g} |")
        elif "error" in r:
            lines.append(f"| {r['section']} | ERROR {r['error'][:200]} | | | | | | |")
    fused_rows = [r for r in rows if r["section"] == "fused-norm" and "error" not in r]
    if fused_rows:
        lines += ["", "## fused GroupNorm+SiLU (Triton) on vs off", "",
                  "| channels-last | fused | batch | eager ms | + CUDA graphs ms | peak GB | max|d| vs fp32 (graphs) | "
                  "max|d| vs fp32 (eager) | max|d| vs torch kernels |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['channels_last']} | {r['fused']} | {r['batch']} | {r['ms']:.2f} | {r['graphs_ms']:.2f} | "
                  f"{r['peak_gb']:.3f} | "
                  f"{r['err_fp32']:.3g} | {r['err_eager_fp32']:.3g} | {r['err_torch_kernels']:.3g} |"
                  for r in fused_rows]
    shape_rows = [r for r in rows if r["section"] in ("norm-shape", "norm-total")]
    if shape_rows:
        lines += ["", "| GroupNorm call (channels-last, alone) | calls | torch GN(+SiLU) ms | fused ms | max|d| |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['shape']}{' +SiLU' if r['silu'] else ''} | {r['calls']} | {r['torch_ms']:.3f} | "
                  f"{r['fused_ms']:.3f} | {r['max_d']:.3g} |" if r["section"] == "norm-shape" else
                  f"| all calls of one forward | {r['calls']} | {r['torch_ms']:.3f} | {r['fused_ms']:.3f} | |"
                  for r in shape_rows]
    first_rows = [r for r in rows if r["section"] == "fused-norm-first"]
    if first_rows:
        lines += ["", "| fresh process, batch 1 | first call s | second call s | start to first output s |",
                  "|---|---|---|---|"]
        lines += [f"| {r['mode']} | ERROR {r['error'][:200]} | | |" if "error" in r else
                  f"| {r['mode']} | {r['first_call_s']:.2f} | {r['second_call_s']:.3f} | {r['start_to_ready_s']:.1f} |"
                  for r in first_rows]
    for r in rows:
        if r["section"] == "profile":
            lines += ["", f"## kernel families, {r['mode']} (GPU ms per call)", "", "| family | ms |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in r["families"].items()]
            lines += ["", "| top kernels | ms | calls |", "|---|---|---|"]
            lines += [f"| `{k}` | {t:.3f} | {c} |" for t, c, k in r["top"]]
        if r["section"] == "aot" and "error" not in r:
            lines += ["", "## AOTInductor package (batch 1)", ""]
            lines += [f"- {k}: {v}" for k, v in r.items() if k != "section"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "probe_lgm_kernels.md").write_text(text + "\n")
        Path(args.out, "probe_lgm_kernels.json").write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
