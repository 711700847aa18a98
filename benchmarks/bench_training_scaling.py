#!/usr/bin/env python3
"""Training scaling over processes of one host: runs ``benchmarks/bench_training.py`` under ``torchrun``
with 1, 2, 4 ... processes and prints step time, throughput and the scaling efficiency.

Efficiency = (throughput per process with N processes) / (throughput of 1 process), at the same
per-process batch (DDP keeps the per-GPU batch, so the effective batch grows with N). Goal of the
multi-GPU issue: >= 90 % at 2 GPUs.

    python benchmarks/bench_training_scaling.py --processes 1 2 4          # GPUs (NCCL), big + tiny-128
    python benchmarks/bench_training_scaling.py --quick --processes 1 2    # CPU processes (gloo), tiny-test

One process per GPU (torchrun sets LOCAL_RANK; accelerate picks the GPU). NVLink multicast stays off
(NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 are set for the children unless already set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench_training.py"
REPO = BENCH.parents[1]


def run_processes(n: int, bench_args: list, quick: bool) -> list:
    """Rows of bench_training.py run by ``n`` processes (one torchrun)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    env.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if quick:
        env["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               str(BENCH), "--json", str(out), *bench_args, *(["--quick"] if quick else [])]
        proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{n} process(es) failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def scaling_table(results: dict) -> str:
    """Markdown table from ``{processes: rows}``; efficiency against the 1-process row of each config."""
    lines = ["| config | processes | batch/process | effective batch | step ms | images/s | images/s per process "
             "| efficiency | peak GB per GPU |", "|---|---|---|---|---|---|---|---|---|"]
    base = {r["config"]: r["img_s"] for r in results.get(1, [])}
    for n in sorted(results):
        for r in results[n]:
            per = r["img_s"] / n
            eff = f"{100 * per / base[r['config']]:.1f} %" if r["config"] in base else "–"
            lines.append(f"| {r['config']} | {n} | {r['batch']} | {n * r['batch']} | {r['ms']:.1f} | "
                         f"{r['img_s']:.1f} | {per:.1f} | {eff} | {r['peak_gb']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", nargs="+", type=int, default=[1, 2], help="process counts to run")
    ap.add_argument("--quick", action="store_true", help="CPU processes (gloo) with tiny-test")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=None, help="passed to bench_training.py")
    ap.add_argument("--batch", nargs="+", type=int, default=None, help="per-process batch, passed on")
    args = ap.parse_args()
    bench_args = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.configs:
        bench_args += ["--configs", *args.configs]
    if args.batch:
        bench_args += ["--batch", *map(str, args.batch)]
    if not args.quick:
        import torch
        if torch.cuda.device_count() < max(args.processes):
            ap.error(f"{max(args.processes)} processes need as many GPUs; {torch.cuda.device_count()} visible "
                     "(--quick runs CPU processes)")
    results = {}
    for n in args.processes:
        results[n] = run_processes(n, bench_args, args.quick)
        print(f"{n} process(es) done", file=sys.stderr, flush=True)
    where = "CPU processes, gloo, 1 thread each" if args.quick else "GPUs of one host, NCCL"
    print(f"\nTraining scaling ({where}); median step of {args.steps} after {args.warmup} warm-up\n")
    print(scaling_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
