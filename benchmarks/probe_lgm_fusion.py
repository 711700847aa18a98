"""What each fused kernel buys LGM big on the default path (issue 15, item 1), in one process.

Random weights (bench_lgm's init), fp16, channels-last, CUDA graphs (the project's runner), input
[B, 4, 9, 256, 256]. Modes, each re-captured:

- ``torch kernels``: FUSED_GROUPNORM off (torch's GroupNorm, SiLU, bias adds, residual ops);
- ``fused GroupNorm+SiLU``: the fused GroupNorm, biases and residuals as torch ops (FOLD_BIASES off);
- ``+ folded biases + residual kernel``: convolutions without bias, the biases inside GroupNorm's
  ``add`` and the ``residual`` kernel (the default until the convolution forms);
- ``+ sub-pixel upsampling``: ``unet.PHASE_UPSAMPLE`` (the up blocks' upsampling convolutions in
  sub-pixel form, interleaved into the next block's concatenation by one kernel);
- ``+ padded conv_in + composed head``: ``unet.PAD_INPUT_CHANNELS = 16``, ``lgm.FUSED_HEAD`` (the default
  until the one-program GroupNorm);
- ``+ one-pass GroupNorm <= N (default)``: the default path, ``fused_norm.ONE_PASS_MAX`` as shipped (one
  program per group for power-of-two groups whose tile has up to N elements);
- ``+ 3x3 convolutions of <= N pixels in tap form``: the option ``unet.TAP_CONV_MAX_PIXELS = N`` (a
  ResnetBlock's 3x3 convolution of a small image as one GEMM over its taps and one kernel summing them,
  ``lgm_core.models.tap_conv``; off by default);
- ``default without the implicit-GEMM convolutions``: ``implicit_conv.CHOICES`` emptied (cuDNN for every
  convolution, the default before them); ``--implicit-table`` adds a row with a probe run's table;
- ``+ residual joins inside the next GroupNorm``: the option ``unet.JOIN_RESIDUAL_INTO_NORM`` on (a block's
  residual join computed by the GroupNorm that reads it, ``fused_norm.residual_group_norm``; off by default);
  ``--pad-input N`` adds rows with other paddings, each ``--one-pass N`` a row with another bound.

For each: median ms (CUDA events), peak GB above the weights, max |d| of the activated Gaussians vs the
fp32 model (positions in [-1, 1], colours in [0, 1]); then a kernel profile (GPU ms per family, the top
kernels with full names) of the best mode at batch 1, run as a graph is built.

Usage on the device (about 1 min): python benchmarks/probe_lgm_fusion.py --out $OUT
CPU smoke (tiny config, Triton interpreter, no timings that mean anything): python benchmarks/probe_lgm_fusion.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import traceback
from pathlib import Path

if "--quick" in sys.argv:  # the CPU smoke runs the Triton kernels in the interpreter, read at Triton's import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_lgm import build, timed  # noqa: E402
from probe_lgm_kernels import QUICK, kernel_profile  # noqa: E402
from lgm_core.models import unet as unet_module  # noqa: E402
from lgm_core.models.lgm import LGMConfig  # noqa: E402
from lgm_core.runtime import CUDAGraphRunner, building_cuda_graph_scope  # noqa: E402


FORMS_OFF = dict(phase=False, pad_input=0, head=False, join=False, taps=0)
TAP_PIXELS = 1024  # unet.TAP_CONV_MAX_PIXELS of the tap-form row (the option is off by default)


def modes(one_pass, pad_inputs=(), default_one_pass=0, any_width=False, default_taps=0, implicit_table=None):
    """(name, set_mode keyword arguments) of every mode; ``default_one_pass``: fused_norm.ONE_PASS_MAX as
    shipped, ``default_taps``: unet.TAP_CONV_MAX_PIXELS as shipped (both read before any mode changes them)."""
    out = [("torch kernels", dict(fused=False, fold=False, one_pass=0, **FORMS_OFF)),
           ("fused GroupNorm+SiLU", dict(fused=True, fold=False, one_pass=0, **FORMS_OFF)),
           ("+ folded biases + residual kernel", dict(fused=True, fold=True, one_pass=0, **FORMS_OFF)),
           ("+ sub-pixel upsampling", dict(fused=True, fold=True, one_pass=0, phase=True, pad_input=0, head=False,
                                           join=False)),
           ("+ padded conv_in + composed head",
            dict(fused=True, fold=True, one_pass=0, phase=True, pad_input=16, head=True, join=False)),
           (f"+ one-pass GroupNorm <= {default_one_pass} (default)",
            dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True, join=False,
                 taps=default_taps)),
           (f"+ 3x3 convolutions of <= {TAP_PIXELS} pixels in tap form",
            dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True, join=False,
                 taps=TAP_PIXELS)),
           ("+ residual joins inside the next GroupNorm",
            dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True, join=True,
                 taps=default_taps))]
    out += [(f"default, conv_in padded to {n}", dict(fused=True, fold=True, one_pass=default_one_pass, phase=True,
                                                    pad_input=n, head=True, taps=default_taps)) for n in pad_inputs]
    out += [(f"default, one-pass GroupNorm <= {n}", dict(fused=True, fold=True, one_pass=n, phase=True, pad_input=16,
                                                         head=True, taps=default_taps))
            for n in one_pass if n != default_one_pass]
    out += [("default without the implicit-GEMM convolutions (cuDNN only)",
             dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True,
                  taps=default_taps, implicit="off"))]
    if implicit_table:
        out += [("+ implicit-GEMM 3x3 convolutions where measured faster (table)",
                 dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True,
                      taps=default_taps, implicit=implicit_table))]
    if any_width:
        out += [(f"default, one-pass GroupNorm <= {default_one_pass} for groups of any width",
                 dict(fused=True, fold=True, one_pass=default_one_pass, phase=True, pad_input=16, head=True,
                      any_width=True, taps=default_taps))]
    return out


def _any_width_block(cg: int, P: int):
    """fused_norm.one_pass_block without its power-of-two condition on the group's channels: the shipped
    rule asked for the group's width rounded up (the tile such a group fills, masked)."""
    import triton

    return _SHIPPED_BLOCK(triton.next_power_of_2(cg), P)


_SHIPPED_BLOCK = None  # fused_norm.one_pass_block as shipped (recorded by the first set_mode)


def set_mode(fused: bool, fold: bool, one_pass: int, phase: bool = True, pad_input: int = 16,
             head: bool = True, any_width: bool = False, join: bool = False, taps: int = 0,
             implicit: str | None = None) -> None:
    from lgm_core.models import fused_norm
    from lgm_core.models import lgm as lgm_module

    global _SHIPPED_BLOCK
    if _SHIPPED_BLOCK is None:
        _SHIPPED_BLOCK = fused_norm.one_pass_block
    fused_norm.one_pass_block = _any_width_block if any_width else _SHIPPED_BLOCK
    unet_module.FUSED_GROUPNORM = fused
    unet_module.FOLD_BIASES = fold
    unet_module.PHASE_UPSAMPLE = phase
    unet_module.PAD_INPUT_CHANNELS = pad_input
    lgm_module.FUSED_HEAD = head
    unet_module.JOIN_RESIDUAL_INTO_NORM = join
    unet_module.TAP_CONV_MAX_PIXELS = taps
    fused_norm.ONE_PASS_MAX = one_pass
    from lgm_core.models import implicit_conv

    global _SHIPPED_CHOICES
    if _SHIPPED_CHOICES is None:
        _SHIPPED_CHOICES = dict(implicit_conv.CHOICES)
    if implicit == "off":  # cuDNN for every convolution
        implicit_conv.CHOICES.clear()
    elif implicit:  # the winners of a probe_implicit_conv run
        implicit_conv.load_choices(implicit)
    else:
        implicit_conv.CHOICES.clear()
        implicit_conv.CHOICES.update(_SHIPPED_CHOICES)


_SHIPPED_CHOICES = None  # implicit_conv.CHOICES as shipped (recorded by the first set_mode)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--one-pass", default="", help="ONE_PASS_MAX values to try (comma list)")
    ap.add_argument("--any-width", action="store_true",
                    help="add a row where the one-program GroupNorm takes groups of any channel count")
    ap.add_argument("--pad-input", default="", help="other PAD_INPUT_CHANNELS values to try (comma list)")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1, help="passes over all modes (interleaved); medians of the passes")
    ap.add_argument("--sweep", default="",
                    help="GroupNorm stats settings to time on the default mode: ';'-separated "
                         "programs_per_sm,stats_tile,warps triples (e.g. '8,4096,4;16,2048,4')")
    ap.add_argument("--implicit-table", default=None,
                    help="implicit_conv_choices.json of probe_implicit_conv.py: adds a row with those tiles")
    ap.add_argument("--only", default="",
                    help="run only the modes whose names contain one of these ';'-separated strings")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    if device == "cpu":
        unet_module.FUSED_DEVICE_TYPES = ("cuda", "cpu")  # the interpreter runs the kernels
        a.iters = 1
    cfg = LGMConfig(**QUICK) if a.quick else "big"
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    batches = [int(b) for b in a.batches.split(",")] if not a.quick else [1]
    one_pass = [int(n) for n in a.one_pass.split(",") if n.strip()][: 1 if a.quick else None]
    pad_inputs = [int(n) for n in a.pad_input.split(",") if n.strip()]
    model = build(cfg, device, dtype).use_channels_last()
    ref_model = build(cfg, device, torch.float32)
    size = model.config.input_size
    from lgm_core.models import lgm as lgm_module

    defaults = (unet_module.FUSED_GROUPNORM, unet_module.FOLD_BIASES, unet_module.PHASE_UPSAMPLE,
                unet_module.PAD_INPUT_CHANNELS, lgm_module.FUSED_HEAD, unet_module.JOIN_RESIDUAL_INTO_NORM,
                unet_module.TAP_CONV_MAX_PIXELS)
    from lgm_core.models import fused_norm

    one_pass_default = fused_norm.ONE_PASS_MAX
    mode_args = dict(default_one_pass=one_pass_default, any_width=a.any_width,
                     default_taps=unet_module.TAP_CONV_MAX_PIXELS, implicit_table=a.implicit_table)
    rows = []
    lines = [f"# LGM fusion probe\n\n- {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (smoke)'}, "
             f"torch {torch.__version__}, {dtype}, channels-last, CUDA graphs\n",
             f"- {a.rounds} round(s) over the modes, {a.iters} timed calls each; median ms = median over the rounds "
             "of each round's median\n",
             "| mode | batch | median ms | min ms | peak GB | max|d| vs fp32 | note |", "|---|---|---|---|---|---|---|"]
    best = None
    try:
        inputs = {}
        for b in batches:
            x = torch.randn(b, 4, 9, size, size, device=device, generator=torch.Generator(device).manual_seed(b))
            with torch.inference_mode():
                inputs[b] = (x, ref_model._forward_gaussians(x))
        runs = {}  # (mode, batch) -> dicts of every round
        for round_index in range(a.rounds):  # modes interleaved round by round: drifts hit all alike
            for b in batches:
                x, ref = inputs[b]
                for name, mode in modes(one_pass, pad_inputs, **mode_args):
                    if a.only and not any(part and part in name for part in a.only.split(";")):
                        continue
                    try:
                        set_mode(**mode)
                        runner = CUDAGraphRunner(model._forward_gaussians, weights=model)

                        def call():
                            if device == "cuda":
                                return runner(x)
                            with building_cuda_graph_scope():  # CPU smoke: the kernels a graph would hold
                                return model._forward_gaussians(x)
                        with torch.inference_mode():
                            base = torch.cuda.memory_allocated() if device == "cuda" else 0
                            ms, peak, out = timed(call, a.iters, 3 if device == "cuda" else 0, device, base)
                            err = float((out.float() - ref).abs().max())
                        failed = runner.failed
                        runner.reset()
                        run = dict(ms=ms, peak_gb=peak, max_d=err, note="capture failed: eager" if failed else "")
                    except Exception as exc:  # noqa: BLE001  (keep the other modes)
                        traceback.print_exc()
                        run = dict(error=f"{type(exc).__name__}: {exc}"[:300])
                    runs.setdefault((name, b), []).append(run)
                    print(json.dumps(dict(round=round_index, mode=name, batch=b, **run)), flush=True)
        for (name, b), results in runs.items():
            good = [r for r in results if "error" not in r]
            if not good:
                rows.append(dict(mode=name, batch=b, error=results[-1]["error"]))
                continue
            ms = statistics.median(r["ms"] for r in good)
            rows.append(dict(mode=name, batch=b, ms=round(ms, 3), min_ms=round(min(r["ms"] for r in good), 3),
                             peak_gb=round(max(r["peak_gb"] for r in good), 3),
                             max_d=max(r["max_d"] for r in good), note=" ".join({r["note"] for r in good} - {""})))
            mode = dict(modes(one_pass, pad_inputs, **mode_args))[name]
            if b == 1 and name != "torch kernels" and (best is None or ms < best[1]):
                best = (name, ms, mode)
        if a.sweep:
            defaults_sweep = (fused_norm.STATS_PROGRAMS_PER_SM, fused_norm.STATS_TILE, fused_norm.STATS_WARPS)
            set_mode(**next(m for n, m in modes(one_pass, pad_inputs, **mode_args) if n.endswith("(default)")))
            try:
                for triple in a.sweep.split(";"):
                    pps, tile, warps = (int(v) for v in triple.split(","))
                    fused_norm.STATS_PROGRAMS_PER_SM, fused_norm.STATS_TILE, fused_norm.STATS_WARPS = pps, tile, warps
                    for b in batches:
                        x = torch.randn(b, 4, 9, size, size, device=device)
                        runner = CUDAGraphRunner(model._forward_gaussians, weights=model)
                        with torch.inference_mode():
                            ms = timed(lambda: runner(x), a.iters, 3, device)[0] if device == "cuda" else float("nan")
                        runner.reset()
                        rows.append(dict(mode=f"default, stats programs/SM {pps}, tile {tile}, warps {warps}",
                                         batch=b, ms=round(ms, 3), peak_gb=float("nan"), max_d=float("nan")))
                        print(json.dumps(rows[-1]), flush=True)
            finally:
                fused_norm.STATS_PROGRAMS_PER_SM, fused_norm.STATS_TILE, fused_norm.STATS_WARPS = defaults_sweep
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['mode']} | {r['batch']} | ERROR {r['error']} | | | | |")
            else:
                lines.append(f"| {r['mode']} | {r['batch']} | {r['ms']} | {r.get('min_ms', '')} | {r['peak_gb']} | "
                             f"{r['max_d']:.3g} | {r.get('note', '')} |")
        if best is not None and device == "cuda":
            default = next((name, mode) for name, mode in modes(one_pass, pad_inputs, **mode_args) if name.endswith("(default)"))
            profiled = [(f"the fastest mode ({best[0]})", best[2])]
            if default[0] != best[0]:
                profiled.append((f"the default ({default[0]})", default[1]))
            x = torch.randn(1, 4, 9, size, size, device=device)

            def as_in_graph():
                with building_cuda_graph_scope():
                    return model._forward_gaussians(x)
            for title, mode in profiled:
                set_mode(**mode)
                with torch.inference_mode():
                    fam, top = kernel_profile(as_in_graph, top_n=40, width=200)
                total = sum(fam.values())
                lines.append(f"\n## kernels of {title}, batch 1: {total:.3f} GPU ms per call\n")
                lines.append("| family | ms |\n|---|---|")
                lines += [f"| {k} | {v:.3f} |" for k, v in fam.items()]
                lines.append("\n| top kernels | ms | calls |\n|---|---|---|")
                lines += [f"| `{k}` | {t:.3f} | {c} |" for t, c, k in top]
    finally:
        (unet_module.FUSED_GROUPNORM, unet_module.FOLD_BIASES, unet_module.PHASE_UPSAMPLE,
         unet_module.PAD_INPUT_CHANNELS, lgm_module.FUSED_HEAD, unet_module.JOIN_RESIDUAL_INTO_NORM,
         unet_module.TAP_CONV_MAX_PIXELS) = defaults
        fused_norm.ONE_PASS_MAX = one_pass_default
        if _SHIPPED_CHOICES is not None:
            from lgm_core.models import implicit_conv

            implicit_conv.CHOICES.clear()
            implicit_conv.CHOICES.update(_SHIPPED_CHOICES)
        if _SHIPPED_BLOCK is not None:
            fused_norm.one_pass_block = _SHIPPED_BLOCK
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "probe_lgm_fusion.md").write_text(text)
        (Path(a.out) / "probe_lgm_fusion.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
