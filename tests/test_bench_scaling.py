"""The scaling table of benchmarks/bench_training_scaling.py (the runs themselves are the DDP tests' job)."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_training_scaling.py"
spec = importlib.util.spec_from_file_location("bench_training_scaling", _PATH)
scaling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling)


def _row(config, batch, ms, img_s, peak=1.0):
    return {"config": config, "batch": batch, "ms": ms, "img_s": img_s, "peak_gb": peak}


def test_efficiency_is_throughput_per_process_against_one_process():
    table = scaling.scaling_table({1: [_row("big", 8, 100.0, 640.0)], 2: [_row("big", 8, 110.0, 1164.0)],
                                   4: [_row("big", 8, 120.0, 2133.0), _row("other", 2, 1.0, 5.0)]})
    lines = table.splitlines()
    assert lines[2].split("|")[8].strip() == "100.0 %"
    assert lines[3].split("|")[8].strip() == "90.9 %"  # 1164 / 2 / 640
    assert lines[3].split("|")[4].strip() == "16"      # effective batch
    assert lines[4].split("|")[8].strip() == "83.3 %"
    assert lines[5].split("|")[8].strip() == "–"       # no 1-process row for that config
