"""Where LGM big's CUDA-graph replay spends the time between its kernels (issue 15, item 1).

On the H200 the default path's kernels add up to ~5.5 ms of GPU time per batch-1 call while a replay
takes ~6.4-7.4 ms (benchmarks/results/probe_lgm_fusion_join_h200.md). This probe profiles replays of the
default path's graph (torch.profiler / CUPTI records each kernel node of a replay), orders the GPU work
of each replay by start time and reports:

- the replay's span (first start to last end), the GPU's busy time, and the idle time between them;
- the idle gaps by size, and summed by the family of the kernel that follows (and precedes) each gap;
- the largest gaps with the kernels on both sides;
- the host's share: the runner's weight check (before and now), and CUDA-event times of the runner's
  call, of the bare replay and of a replay queued behind a busy GPU (launch latency hidden).

Random weights (bench_lgm's init), fp16, channels-last, the project's CUDAGraphRunner.

    python benchmarks/probe_lgm_gaps.py --out $OUT        # H200, ~30 s
    python benchmarks/probe_lgm_gaps.py --quick           # CPU: parses a trace of the tiny model run eagerly
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_lgm import build, timed  # noqa: E402
from probe_lgm_kernels import QUICK, family  # noqa: E402
from lgm_core.models.lgm import LGMConfig  # noqa: E402
from lgm_core.runtime import CUDAGraphRunner, _walk_every_time  # noqa: E402  (the check as it was until 2026-12-02)

GPU_CATEGORIES = ("kernel", "gpu_memset", "gpu_memcpy")
BUCKETS = (1.0, 2.0, 3.0, 5.0, 10.0, 50.0)  # gap bucket upper bounds, µs


def gpu_events(trace: dict) -> list[dict]:
    """The trace's GPU operations (kernels, memsets, copies) ordered by start: dicts of name, ts, dur (µs)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("cat") in GPU_CATEGORIES and "dur" in e]
    events.sort(key=lambda e: float(e["ts"]))
    return [dict(name=e.get("name", "?"), ts=float(e["ts"]), dur=float(e["dur"]), cat=e["cat"]) for e in events]


def split_calls(events: list[dict], calls: int) -> list[list[dict]]:
    """The ordered GPU events cut into ``calls`` equal runs (every replay launches the same nodes)."""
    per = len(events) // calls
    return [events[i * per:(i + 1) * per] for i in range(calls)] if per else []


def label(e: dict) -> str:
    return "memset" if e["cat"] == "gpu_memset" else ("memcpy" if e["cat"] == "gpu_memcpy" else family(e["name"]))


def analyse(call: list[dict]) -> dict:
    """Span, busy time and the gaps of one call's ordered events (µs). Overlapping kernels count once."""
    span = call[-1]["ts"] + call[-1]["dur"] - call[0]["ts"]
    busy, end, gaps = 0.0, call[0]["ts"], []
    for prev, e in zip([None] + call[:-1], call):
        start, stop = e["ts"], e["ts"] + e["dur"]
        if prev is not None and start > end:
            gaps.append((start - end, prev, e))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    return dict(span=span, busy=busy, gaps=gaps, count=len(call))


def report(calls: list[list[dict]], wall_ms: float | None, top: int) -> list[str]:
    stats = [analyse(c) for c in calls]
    lines = ["| replay | GPU ops | span µs | busy µs | idle µs | gaps |", "|---|---|---|---|---|---|"]
    for i, s in enumerate(stats):
        lines.append(f"| {i} | {s['count']} | {s['span']:.1f} | {s['busy']:.1f} | {s['span'] - s['busy']:.1f} | "
                     f"{len(s['gaps'])} |")
    if wall_ms is not None:
        lines.append(f"\nCUDA-event time per replay without the profiler: **{wall_ms * 1000:.1f} µs** (median).")
    med = min(stats, key=lambda s: abs(s["span"] - statistics.median(t["span"] for t in stats)))
    lines.append(f"\n## gaps of the median replay (span {med['span']:.1f} µs, idle {med['span'] - med['busy']:.1f} µs)\n")
    lines.append("| gap size | gaps | idle µs |\n|---|---|---|")
    lower = 0.0
    for upper in BUCKETS + (float("inf"),):
        sel = [g for g, _, _ in med["gaps"] if lower <= g < upper]
        lines.append(f"| {lower:g}-{upper:g} µs | {len(sel)} | {sum(sel):.1f} |")
        lower = upper
    for side, pick in (("following", lambda p, n: label(n)), ("preceding", lambda p, n: label(p))):
        by = collections.defaultdict(lambda: [0, 0.0])
        for g, p, n in med["gaps"]:
            by[pick(p, n)][0] += 1
            by[pick(p, n)][1] += g
        lines.append(f"\n| family of the {side} kernel | gaps | idle µs | mean µs |\n|---|---|---|---|")
        for k, (cnt, tot) in sorted(by.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"| {k} | {cnt} | {tot:.1f} | {tot / cnt:.2f} |")
    lines.append(f"\n| largest gaps µs | before | after |\n|---|---|---|")
    for g, p, n in sorted(med["gaps"], key=lambda t: -t[0])[:top]:
        lines.append(f"| {g:.1f} | `{p['name'][:90]}` | `{n['name'][:90]}` |")
    return lines


def host_rows(model, runner, x, iters: int) -> list[str]:
    """Where a call's time goes besides the graph's kernels: the weight check on the host, and CUDA-event
    times of the runner's call, of the bare graph replay, and of the replay launched while the GPU is
    still busy (its launch hidden: GPU time alone)."""
    import time

    def host_us(fn):
        fn()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) / iters * 1e6

    rows = ["| per call | µs |", "|---|---|",
            f"| weight check, walking the module every call (before) | {host_us(lambda: _walk_every_time([model])):.1f} |",
            f"| weight check, `_WeightWatch` (now) | {host_us(runner._current_weights):.1f} |"]
    (graph,) = runner.graphs.values()

    def event_us(fn, busy=False):
        times = []
        for _ in range(iters):
            if busy:
                torch.cuda._sleep(20_000_000)  # ~10 ms of spinning: everything below is queued behind it
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000)
        return statistics.median(times)

    rows += [f"| `runner(x)` (input copy, weight check, replay, output clone) | {event_us(lambda: runner(x)):.1f} |",
             f"| graph replay alone | {event_us(graph.replay):.1f} |",
             f"| graph replay queued behind a busy GPU (no launch latency) | {event_us(graph.replay, busy=True):.1f} |"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    device = "cuda" if torch.cuda.is_available() and not a.quick else "cpu"
    cfg = LGMConfig(**QUICK) if device == "cpu" else "big"
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = build(cfg, device, dtype).use_channels_last()
    size = model.config.input_size
    x = torch.randn(a.batch, 4, 9, size, size, device=device)
    runner = CUDAGraphRunner(model._forward_gaussians, weights=model) if device == "cuda" else model._forward_gaussians
    wall, host = None, []
    with torch.inference_mode():
        if device == "cuda":  # before the profiler: after a profiling session launches stay slower
            wall = timed(lambda: runner(x), 50, 5, device)[0]
            host = host_rows(model, runner, x, 50)
        activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
        runner(x)
        if device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(a.calls):
                runner(x)
            if device == "cuda":
                torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = gpu_events(trace)
    title = (f"# LGM big replay timeline\n\n- {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (smoke)'}, "
             f"torch {torch.__version__}, {dtype}, channels-last, CUDA graphs, batch {a.batch}, {a.calls} profiled replays, "
             f"{len(events)} GPU ops\n")
    if device == "cpu":  # the smoke run has no GPU ops: exercise the analysis on the CPU ops instead
        events = sorted(([dict(name=e["name"], ts=float(e["ts"]), dur=float(e["dur"]), cat="kernel")
                          for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e
                          and e["name"].startswith("aten::conv")]), key=lambda e: e["ts"])
    calls = split_calls(events, a.calls)
    if not calls:
        print(title + "\nno GPU operations were recorded")
        return 1
    text = "\n".join([title] + host + [""] + report(calls, wall, a.top)) + "\n"
    print(text)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / f"probe_lgm_gaps_b{a.batch}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
