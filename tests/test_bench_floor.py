"""benchmarks/bench_floor.py: the issue-15 side-by-side benchmark, smoke-run on the CPU (--quick).

One subprocess runs every section with tiny models (profile, LGM modes, multi-view modes, throughput,
and the compile workers: a cold and a warm process each for LGM and the multi-view UNet), so that the
GPU run's code paths that do not need CUDA are exercised before the one device run. The row machinery
(budget skips, errors inside rows) is tested in-process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_floor.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_floor", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rows_skip_on_budget_and_keep_errors_in_their_row(capsys):
    bench = _bench()
    table = bench.Table("t", ["batch", "mode", "median ms", "note"])
    budget = bench.Budget(10)
    ok = bench.row(table, budget, 1, {"batch": 1, "mode": "a"}, lambda: {"median ms": 1.5})
    bad = bench.row(table, budget, 1, {"batch": 1, "mode": "b"}, lambda: 1 / 0)
    skipped = bench.row(table, budget, 60, {"batch": 1, "mode": "c"}, lambda: pytest.fail("must not run"))
    assert ok["median ms"] == 1.5 and "ERROR ZeroDivisionError" in bad["note"]
    assert skipped["note"].startswith("skipped:")
    md = table.markdown()
    assert "| 1 | a | 1.50 |" in md and "ZeroDivisionError" in md and "skipped" in md
    assert "[t] 1 | b" in capsys.readouterr().out  # printed as soon as done


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers not installed")
def test_quick_run_every_section(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), LGM_CACHE_DIR=str(tmp_path / "unused"))
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = (tmp_path / "bench_floor.md").read_text()
    tables = json.loads((tmp_path / "bench_floor.json").read_text())
    assert len(tables) == 4 and md.index("1. Profile") < md.index("2. LGM") < md.index("3. Multi-view") \
        < md.index("4. Throughput")
    assert "ERROR" not in md and "skipped" not in md and "section failed" not in md, md
    lgm = next(v for k, v in tables.items() if k.startswith("2."))
    modes = [r[1] for r in lgm["rows"]]
    assert modes[:4] == ["original-equivalent (math attention, fp16 GN)", "eager SDPA", "+ CUDA graphs",
                         "+ channels-last = default path (optimize_for_inference)"]
    warm = next(r for r in lgm["rows"] if r[1].startswith("+ compile warm"))
    err_col = lgm["header"].index("max|d| vs eager fp16")
    assert float(warm[err_col]) < 1e-3  # the compiled function computes the same Gaussians
    mv = next(v for k, v in tables.items() if k.startswith("3."))
    assert {r[0] for r in mv["rows"]} == {"mvdream", "imagedream"}
    assert any(r[1].startswith("+ compile warm") and r[0] == "imagedream" for r in mv["rows"])
    tp = next(v for k, v in tables.items() if k.startswith("4."))
    assert tp["rows"] and float(tp["rows"][0][tp["header"].index("objects/s")]) > 0
    prof = next(v for k, v in tables.items() if k.startswith("1."))
    stages = {r[2] for r in prof["rows"]}
    assert {"text encoder", "VAE decode", "denoising loop (UNet + CFG + scheduler)", "CLIP vision"} <= stages


def test_worker_killed_at_the_deadline(tmp_path):
    bench = _bench()
    spec = dict(name="lgm_b1", phase="cold", kind="lgm", device="cpu", quick=True, configs="", batch=1,
                cache_dir=str(tmp_path / "c"), scratch=str(tmp_path / "s"), backend="eager", iters=1, warmup=0, steps=1)
    t0 = bench.time.monotonic()
    res = bench.launch_worker(spec, bench.Budget(1.5))
    assert res["error"].startswith("killed at the budget deadline")
    assert bench.time.monotonic() - t0 < 30
