"""Benchmark one LGM training step (the trainer's own code path) and print a Markdown table.

A step = ``Trainer.forward`` (inputs + Plücker rays on the device, network under bf16 autocast,
differentiable rendering of every supervision view, loss) + backward + grad clip + AdamW. Data
comes from a small synthetic dataset rendered first (not timed); loading is not timed either.

    python benchmarks/bench_training.py              # CUDA: big at batch 8 (the paper's per-GPU batch,
                                                     # 4 inputs at 256, 8 views at 512) and tiny-128
    python benchmarks/bench_training.py --quick      # CPU smoke run: tiny-test
    python benchmarks/bench_training.py --configs big small --batch 8 4 --steps 5
    torchrun --nproc_per_node 2 benchmarks/bench_training.py --json r.json   # DDP (NCCL on GPUs, gloo on CPU);
                                                     # benchmarks/bench_training_scaling.py drives 1/2/4 processes

Columns: median step time, training images per second (supervision views rendered and compared
per second: batch x views x processes / step time), samples per second (all processes), peak GPU
memory (allocated; the largest over the processes). Under torchrun / accelerate launch every process
runs the same steps (DDP: gradients all-reduced in backward); process 0 prints and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lgm_core.training.config import load_config  # noqa: E402
from lgm_core.training.synthetic import make_synthetic_dataset  # noqa: E402
from lgm_core.training.trainer import TrainOptions, Trainer  # noqa: E402


def bench(name: str, batch: int, data: Path, steps: int, warmup: int, lpips_weights, backend: str,
          channels_last: bool) -> dict:
    run = load_config(name, {"batch_size": batch, "num_workers": 0, "validate_every": 0})
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(TrainOptions(data=data, output=Path(out), run=run, steps=1000, progress=False,
                                       lpips_weights=lpips_weights, render_backend=backend,
                                       channels_last=channels_last))
        loader = iter(trainer.loader(0, None))
        batch_data = trainer._to_device(next(loader))
        cuda = trainer.device.type == "cuda"
        model, opt = trainer.model, trainer.optimizer
        lam = run.train.lambda_lpips if trainer.lpips is not None else 0.0

        def step():
            terms, _, _ = trainer.forward(model, batch_data, lam)
            trainer.acc.backward(terms["loss"])
            trainer.acc.clip_grad_norm_(trainer.params, run.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        first = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        first = time.perf_counter() - first
        for _ in range(max(0, warmup - 1)):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        world = trainer.world
        # every process's median; the step of the slowest process is the step of the run
        ms = _max_over_processes(statistics.median(times) * 1000, trainer)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        peak = _max_over_processes(peak, trainer) if cuda else peak
        views = run.train.num_views
        return {"processes": world,
            "config": name, "batch": batch, "in": run.model.input_size, "out": run.model.output_size, "views": views,
            "gaussians": run.model.num_gaussians, "ms": ms, "img_s": world * batch * views / (ms / 1000),
            "samples_s": world * batch / (ms / 1000), "peak_gb": peak,
            "first_s": first, "render": trainer.backend, "precision": trainer.mixed_precision,
            "lpips": "yes" if lam > 0 else "no (λ=0)",
        }


def _max_over_processes(value: float, trainer) -> float:
    """The largest ``value`` of the run's processes (itself when there is one)."""
    if trainer.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=trainer.device)
    return float(trainer.acc.gather(t).max().item())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run with tiny-test")
    ap.add_argument("--configs", nargs="+", default=None, help="presets or JSON configs (default: big tiny-128)")
    ap.add_argument("--batch", nargs="+", type=int, default=None, help="per-GPU batch per config (default: 8 16)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--lpips-weights", default=None, help="LPIPS weights (default: torchvision cache / lpips package)")
    ap.add_argument("--backend", default="auto", choices=["auto", "gsplat", "torch"], help="render backend")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here (process 0)")
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cuda = torch.cuda.is_available() and not args.quick
    configs = args.configs or (["big", "tiny-128"] if cuda else ["tiny-test"])
    batches = args.batch or ([8, 16] if cuda else [2])
    if len(batches) == 1:
        batches = batches * len(configs)
    if len(batches) != len(configs):
        ap.error("--batch needs one value, or one per config")
    if not cuda:
        torch.set_num_threads(1)
    size = max(load_config(c).model.output_size for c in configs)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        make_synthetic_dataset(data, num_objects=2, ring=8, size=size, extra_elevations=())
        print(f"synthetic dataset ({size} px) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for name, b in zip(configs, batches):
            rows.append(bench(name, b, data, args.steps, args.warmup, args.lpips_weights, args.backend,
                              args.channels_last))
            if rank == 0:
                print(f"{name}: {rows[-1]['ms']:.1f} ms/step", file=sys.stderr)
    if rank != 0:
        return 0
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    dev = torch.cuda.get_device_name() if cuda else "CPU (1 thread)"
    world = rows[0]["processes"] if rows else 1
    print(f"\nOne training step on {world} x {dev}, torch {torch.__version__}, median of {args.steps} after "
          f"{args.warmup} warm-up\n")
    print("| config | processes | batch/GPU | input | renders | views | Gaussians | precision | render | LPIPS | step ms | "
          "images/s | samples/s | peak GB | first step s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['processes']} | {r['batch']} | {r['in']}² | {r['out']}² | {r['views']} | {r['gaussians']:,} | "
              f"{r['precision']} | {r['render']} | {r['lpips']} | {r['ms']:.1f} | {r['img_s']:.1f} | "
              f"{r['samples_s']:.2f} | {r['peak_gb']:.2f} | {r['first_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
