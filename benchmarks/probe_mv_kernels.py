"""Where one multi-view diffusion denoising step's GPU time goes, and what the fused GroupNorm and
channels-last buy (issue 15, item 2: "profile first").

One process, random-weight real-size pipelines built from the hub configs (bench_mvdiffusion's
``random_pipeline``), fp16, 30 DDIM steps with CFG (the UNet runs 8 rows: 4 views x 2). For each of
MVDream and ImageDream:

1. the UNet step's inputs are recorded from a real pipeline call;
2. for fused kernels off/on (and, with ``--one-pass N``, on with the one-program GroupNorm for groups of
   up to N elements) x contiguous/channels-last: the UNet step alone, eager and under the project's
   CUDA-graph runner (CUDA events, medians), and a kernel-family profile (``torch.profiler``, GPU ms per
   step) of the step run as a graph is built (``runtime.building_cuda_graph_scope``; plain eager calls
   always get torch's kernels since the fused ones run only inside graphs);
3. the whole pipeline call (prompt/image -> 4 views on the host, the default CUDA-graph path) with the
   fused GroupNorm off and on, and max |difference| of the output images against the run with torch's
   kernels next to the noise level (the same call with SDPA on its math backend).

Usage on the device (about 2 min): python benchmarks/probe_mv_kernels.py --configs DIR --one-pass 32768 --out $OUT
CPU smoke (tiny pipeline, 2 steps, no CUDA rows): python benchmarks/probe_mv_kernels.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_floor import build_pipeline, max_abs, mv_call  # noqa: E402
from bench_lgm import timed  # noqa: E402
from probe_lgm_kernels import kernel_profile  # noqa: E402
from lgm_core.models import unet as unet_module  # noqa: E402
from lgm_core.runtime import CUDAGraphRunner, building_cuda_graph_scope  # noqa: E402


def record_step_inputs(pipe, kind: str, steps: int, **extra):
    """The arguments of the pipeline's first UNet step (cloned)."""
    seen = []
    runner = pipe._unet_graphs
    fn = runner.fn

    def recording(*args):
        if not seen:
            seen.append(tuple(None if a is None else a.clone() for a in args))
        return fn(*args)

    runner.fn = recording
    try:
        mv_call(pipe, kind, steps, **extra)
    finally:
        runner.fn = fn
    return seen[0]


def wall_ms(fn, iters: int, device: str) -> float:
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=str(REPO.parent / "shared" / "spec" / "mvdream_configs" /
                                             "imagedream-ipmv-diffusers"))
    ap.add_argument("--kinds", default="mvdream,imagedream")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calls", type=int, default=3, help="timed whole-pipeline calls per mode")
    ap.add_argument("--one-pass", type=int, default=0,
                    help="also measure the fused GroupNorm's one-program kernel for groups up to this size")
    ap.add_argument("--batch", type=int, default=1,
                    help="prompts per call (MVDream; ImageDream repeats its image): the UNet runs 8 x batch rows")
    ap.add_argument("--layouts", default="contiguous,channels_last")
    ap.add_argument("--no-fold", action="store_true",
                    help="also measure the fused GroupNorm without the folded biases / residual kernel")
    ap.add_argument("--per-row-context", action="store_true",
                    help="also measure the fused step with the text context repeated per frame (as before the "
                         "pipeline passed one context row per object)")
    ap.add_argument("--variant", action="append", default=[], metavar="MODULE.NAME=VALUE[,...]",
                    help="also measure the fused step with module switches set (modules: fused_norm, unet = "
                         "lgm_core.models.unet, mv_unet = lgm_core.mvdiffusion.unet, runtime = lgm_core.runtime), "
                         "e.g. mv_unet.FUSE_QKV=False")
    ap.add_argument("--skip-calls", action="store_true", help="only the UNet step rows (no whole-call rows)")
    ap.add_argument("--top", type=int, default=15, help="kernels listed per profile")
    ap.add_argument("--name-width", type=int, default=90, help="characters of each kernel name")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    a.kinds = a.kinds.split(",")
    device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    if a.quick:
        a.steps, a.iters, a.calls = 2, 2, 1
    lines = [f"# Multi-view diffusion kernel probe\n\n- {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, "
             f"torch {torch.__version__}, {a.steps} DDIM steps, CFG (UNet batch {8 * a.batch}), {'fp16' if device == 'cuda' else 'fp32 (CPU smoke)'}\n"]
    rows, results = [], {}
    fused_default = unet_module.FUSED_GROUPNORM
    from lgm_core.models import fused_norm

    one_pass_default = fused_norm.ONE_PASS_MAX
    modes = ([False] + (["no-fold"] if a.no_fold else []) + [True] + (["one-pass"] if a.one_pass else [])
             + (["per-row-context"] if a.per_row_context else []) + list(a.variant))
    fold_default = unet_module.FOLD_BIASES
    layouts = [layout == "channels_last" for layout in a.layouts.split(",")]

    from lgm_core.mvdiffusion import unet as mv_unet

    from lgm_core import runtime

    switch_modules = {"fused_norm": fused_norm, "unet": unet_module, "mv_unet": mv_unet, "runtime": runtime}
    switched = {}  # (module, name) -> default value

    def set_mode(mode):
        for (mod, name), value in switched.items():  # back to the defaults first
            setattr(mod, name, value)
        unet_module.FUSED_GROUPNORM = bool(mode)
        unet_module.FOLD_BIASES = mode != "no-fold"
        fused_norm.ONE_PASS_MAX = a.one_pass if mode == "one-pass" else one_pass_default
        if isinstance(mode, str) and "=" in mode:
            for item in mode.split(","):
                target, value = item.split("=", 1)
                mod_name, name = target.split(".", 1)
                mod = switch_modules[mod_name]
                switched.setdefault((mod, name), getattr(mod, name))
                setattr(mod, name, eval(value, {}))  # noqa: S307  (the command line's own literals)

    extra = {}
    if a.batch > 1:
        extra = dict(prompt=[f"a ceramic owl, variant {i}" for i in range(a.batch)])
    for kind in a.kinds:
        try:
            pipe = build_pipeline(kind, a, device)
            pipe.use_cuda_graphs = True
            args = record_step_inputs(pipe, kind, a.steps, **(extra if kind == "mvdream" else {}))
            step = pipe._unet_step
            for channels_last in layouts:
                pipe.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                for fused in modes:
                    set_mode(fused)
                    graphed = CUDAGraphRunner(step, weights=pipe.unet,  # as the pipeline's step runner
                                              cudnn_benchmark=pipe._unet_graphs.cudnn_benchmark)
                    step_args = args
                    if fused == "per-row-context" and args[3].shape[0] != args[0].shape[0]:
                        step_args = (*args[:3], args[3].repeat_interleave(pipe.num_frames, 0), *args[4:])

                    def as_in_graph(step_args=step_args):
                        with building_cuda_graph_scope():
                            return step(*step_args)
                    with torch.inference_mode():
                        eager_ms = timed(as_in_graph, a.iters, 3, device)[0]
                        graph_ms = (timed(lambda: graphed(*step_args), a.iters, 3, device)[0] if device == "cuda"
                                    else None)
                        fam, top = (kernel_profile(as_in_graph, top_n=a.top, width=a.name_width) if device == "cuda"
                                    else ({}, []))
                    graphed.reset()
                    rows.append(dict(kind=kind, fused=fused, channels_last=channels_last, eager_ms=round(eager_ms, 3),
                                     graph_ms=None if graph_ms is None else round(graph_ms, 3),
                                     families={k: round(v, 3) for k, v in fam.items()},
                                     top=[(round(t, 3), c, k) for t, c, k in top]))
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "top"}), flush=True)
            pipe.unet.to(memory_format=torch.contiguous_format)
            if a.skip_calls:
                continue
            calls = {}
            for fused in [m for m in modes if m != "per-row-context" and not (isinstance(m, str) and "=" in m)]:
                set_mode(fused)
                pipe.release_cuda_graphs()
                mv_call(pipe, kind, a.steps)  # capture
                ms = wall_ms(lambda: mv_call(pipe, kind, a.steps), a.calls, device)
                calls[fused] = (ms, mv_call(pipe, kind, a.steps).images)
            unet_module.FUSED_GROUPNORM = False
            pipe.use_cuda_graphs = False
            from torch.nn.attention import SDPBackend, sdpa_kernel

            eager = mv_call(pipe, kind, a.steps).images
            with sdpa_kernel([SDPBackend.MATH]):
                noise = max_abs(mv_call(pipe, kind, a.steps).images, eager)
            results[kind] = dict(call_ms_torch_norm=round(calls[False][0], 1), call_ms_fused=round(calls[True][0], 1),
                                 call_ms_one_pass=round(calls["one-pass"][0], 1) if "one-pass" in calls else None,
                                 max_d_fused_vs_torch=max_abs(calls[True][1], calls[False][1]),
                                 max_d_graphs_vs_eager=max_abs(calls[False][1], eager), noise_math_sdpa=noise)
            print(kind, json.dumps(results[kind]), flush=True)
            del pipe
            torch.cuda.empty_cache() if device == "cuda" else None
        except Exception as exc:  # keep the other kind
            traceback.print_exc()
            results[kind] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            set_mode(True)
            unet_module.FUSED_GROUPNORM = fused_default
            unet_module.FOLD_BIASES = fold_default
            fused_norm.ONE_PASS_MAX = one_pass_default

    lines.append("| workload | fused kernels | channels-last | UNet step eager ms (graph's kernels) | + CUDA graphs ms |")
    lines.append("|---|---|---|---|---|")
    for r in rows:
        lines.append(f"| {r['kind']} | {r['fused']} | {r['channels_last']} | {r['eager_ms']} | {r['graph_ms']} |")
    for r in rows:
        if not r["families"]:
            continue
        lines.append(f"\n## {r['kind']}, fused={r['fused']}, channels_last={r['channels_last']}: "
                     f"kernel families of one eager step (GPU ms)\n")
        lines.append("| family | ms |\n|---|---|")
        lines += [f"| {k} | {v} |" for k, v in r["families"].items()]
        lines.append("\n| top kernels | ms | calls |\n|---|---|---|")
        lines += [f"| `{k}` | {t} | {c} |" for t, c, k in r["top"]]
    lines.append(f"\n## whole call, {a.steps} steps, CUDA graphs (default path): fused GroupNorm off vs on\n")
    lines.append("| workload | torch GroupNorm ms | fused ms | one-pass ms | max|d| fused vs torch | max|d| graphs vs eager | "
                 "noise (SDPA math) |\n|---|---|---|---|---|---|---|")
    for kind, r in results.items():
        if "error" in r:
            lines.append(f"| {kind} | ERROR {r['error']} | | | | | |")
        else:
            lines.append(f"| {kind} | {r['call_ms_torch_norm']} | {r['call_ms_fused']} | {r['call_ms_one_pass']} | "
                         f"{r['max_d_fused_vs_torch']:.2e} | "
                         f"{r['max_d_graphs_vs_eager']:.2e} | {r['noise_math_sdpa']:.2e} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_mv_kernels.md").write_text(text)
        (Path(a.out) / "probe_mv_kernels.json").write_text(json.dumps({"rows": rows, "calls": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
