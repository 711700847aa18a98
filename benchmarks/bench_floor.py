"""Toward the hardware floor (issue 15): every mode of LGM and multi-view diffusion side by side in one run.

    python benchmarks/bench_floor.py --configs DIR [--budget 255] [--out DIR]   # GPU (CUDA), real sizes
    python benchmarks/bench_floor.py --quick                                     # CPU smoke run, tiny models

Random weights in the official layouts (compute does not depend on values), fp16 on CUDA. Sections, one
Markdown table each, printed at the end in this order (each row is also printed as soon as it is done):

1. **Profile** of text -> 4 views (MVDream) and image -> 4 views (ImageDream), eager and CUDA graphs:
   GPU time per stage (CUDA events around each stage: text encoder, CLIP vision, VAE encode, conditions,
   the 30 denoising steps, of which scheduler steps, VAE decode, device -> host copy), host time per
   stage, and the host syncs of one call (``torch.cuda.set_sync_debug_mode``).
2. **LGM** ``big`` fp16, batch 1 and 4: original-equivalent (explicit-softmax attention, fp16 GroupNorm as
   the original's ``model.half()``), eager SDPA, + CUDA graphs, + compile cold, + compile warm. Ratios
   against the original-equivalent row; errors against eager fp16 and against the fp32 model.
3. **Multi-view diffusion** at 30 DDIM steps: eager, CUDA graphs (the default), compiled + graphs (cold,
   warm); errors against eager fp16, next to the noise of switching SDPA to its math backend.
4. **Throughput** text -> Gaussians (batched diffusion + batched LGM, the default graph path) at batch
   1, 4, 16: objects/s and peak memory with both models resident, through ``lgm_core.pipelines.text_to_3d``
   with a list of prompts and one seed per object (what ``python -m lgm_core batch`` calls per batch; the
   views stay on the GPU between the two models).

**Compilation** goes through :mod:`lgm_core.compile_cache`. Cold compiles run in background worker
processes (``--compile-slots`` at a time; by default while sections 1-4 are timed, so their first-call
seconds are upper bounds) with an empty Inductor/Triton cache each and a fresh artifact folder; each
warm row is a fresh process (again empty Inductor/Triton caches) that finds only the artifact the cold
process wrote: "warm-up s" is its compile-to-first-output time, "start s" its process start to ready.
Warm rows are timed alone in the foreground.

Robustness: each row runs in try/except (an error is printed in its row), a global ``--budget`` (seconds,
whole run) skips rows that no longer fit with a note and kills workers at the deadline, and every line
is flushed. Timings: CUDA events, medians after warm-up. Peak memory: ``max_memory_allocated`` above what
was allocated before the model(s) of the row were built (weights + activations of that model), except
the throughput section (absolute, both models resident).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lgm_core.compile_cache import PersistentCompile, compile_cached  # noqa: E402
from lgm_core.models.lgm import LGM, LGMConfig  # noqa: E402
from lgm_core.models import unet as unet_module  # noqa: E402
from lgm_core.models.unet import GroupNorm32  # noqa: E402
from lgm_core.pipelines import text_to_3d, text_to_views, views_to_gaussians  # noqa: E402
from bench_lgm import build, timed  # noqa: E402  (random init and CUDA-event timing of the LGM benchmark)

DEFAULT_CONFIGS = ROOT.parent / "shared" / "spec" / "mvdream_configs" / "imagedream-ipmv-diffusers"
QUICK_LGM = LGMConfig(down_channels=(32, 64), down_attention=(False, True), up_channels=(64,),
                      up_attention=(True,), splat_size=16, input_size=32, output_size=32)
"""CPU smoke-run LGM: 2 down blocks, attention, input 32 x 32 (the real one is ``big`` at 256 x 256)."""
REFERENCE_H200 = {  # issue 15 / shared/gpu/README.md, 2026-12-01, the original code on the H200
    ("lgm", 1): "original naive 18.6 ms, +xformers(SDPA) 14.9 ms",
    ("lgm", 4): "original naive 57.1 ms, +xformers(SDPA) 35.2 ms",
    ("mv", "mvdream"): "original pipeline 1222 ms",
    ("mv", "imagedream"): "original pipeline 2284 ms (min 1505)",
}
COST = {  # seconds a row is expected to need on the H200 (rows that no longer fit are skipped)
    "cuda": dict(lgm_setup=25, lgm_row=6, mv_setup=15, mv_rows=25, throughput=45, warm_lgm=45, warm_mv=60),
    "cpu": dict(lgm_setup=5, lgm_row=3, mv_setup=5, mv_rows=10, throughput=10, warm_lgm=40, warm_mv=60),
}


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- budget, rows
class Budget:
    """Seconds left of the whole run."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


class Table:
    """One Markdown table; rows are printed as they complete."""

    def __init__(self, title: str, header: List[str]):
        self.title, self.header, self.rows, self.notes = title, header, [], []

    def add(self, values: Dict[str, Any]) -> int:
        """Append (and print) a row; returns its index for :meth:`update`."""
        row = [_fmt(values.get(h, "")) for h in self.header]
        self.rows.append(row)
        log(f"  [{self.title}] " + " | ".join(row))
        return len(self.rows) - 1

    def update(self, index: int, column: str, value: Any) -> None:
        self.rows[index][self.header.index(column)] = _fmt(value)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  [{self.title}] note: {text}")

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1 or v == 0:
            return f"{v:.2f}"
        return f"{v:.2e}" if abs(v) < 1e-2 else f"{v:.3f}"
    return str(v).replace("|", "/").replace("\n", " ")


def row(table: Table, budget: Budget, cost: float, base: Dict[str, Any], fn: Callable[[], Dict[str, Any]]) -> Dict:
    """Run one row: skipped with a note when ``cost`` seconds no longer fit, errors printed in the row."""
    if budget.left() < cost:
        values = dict(base, note=f"skipped: {budget.left():.0f} s of the budget left, needs ~{cost:.0f} s")
        table.add(values)
        return values
    try:
        values = dict(base, **fn())
    except Exception as exc:  # keep the other rows
        traceback.print_exc(file=sys.stdout)
        values = dict(base, note=f"ERROR {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        _free()
    values["_index"] = table.add(values)
    return values


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- timing
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def allocated(device) -> int:
    return torch.cuda.memory_allocated() if torch.device(device).type == "cuda" else 0


def wall(fn: Callable[[], Any], device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def max_abs(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    a = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a).float().cpu()
    b = torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b).float().cpu()
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------- models
def lgm_config(quick: bool):
    return QUICK_LGM if quick else LGMConfig.preset("big")


def lgm_input(config: LGMConfig, batch: int, device) -> torch.Tensor:
    """The same input in every process: [B, 4, 9, S, S] standard normal, seeded by the batch size."""
    gen = torch.Generator().manual_seed(1000 + batch)
    s = config.input_size
    return torch.randn(batch, 4, 9, s, s, generator=gen).to(device)


def build_lgm(config: LGMConfig, device, dtype) -> LGM:
    """Random-weight LGM (bench_lgm's init: the same weights in every process)."""
    return build(config, device, dtype)


def tiny_folder(kind: str) -> Path:
    from lgm_core.testing import make_tiny_pipeline_folder

    root = Path(tempfile.gettempdir()) / f"lgm_floor_tiny_{os.getpid()}"
    return make_tiny_pipeline_folder(root / kind, kind=kind)


def build_pipeline(kind: str, args, device):
    """A random-weight MVDream/ImageDream pipeline: hub configs on CUDA, the tiny stand-in with --quick."""
    if args.quick:
        from lgm_core.mvdiffusion.pipeline import MultiViewPipeline

        return MultiViewPipeline.from_pretrained(str(tiny_folder(kind)), device=device, dtype=torch.float32)
    from bench_mvdiffusion import random_pipeline

    return random_pipeline(Path(args.configs), kind, torch.device(device), torch.float16)


def mv_kwargs(kind: str, steps: int) -> Dict[str, Any]:
    kwargs = dict(prompt="a ceramic owl", num_inference_steps=steps, elevation=0.0)
    if kind == "imagedream":
        yy, xx = np.mgrid[0:256, 0:256] / 255.0
        kwargs["image"] = np.stack([xx, yy, 0.5 * (xx + yy)], -1).astype(np.float32)
        kwargs["prompt"] = ""
    return kwargs


def mv_call(pipe, kind: str, steps: int, **extra):
    return pipe(**{**mv_kwargs(kind, steps), **extra}, generator=torch.Generator().manual_seed(0))


def reconstruct(lgm: LGM, out):
    """MultiViewOutput -> Gaussians through the user-level call (``out.views`` or ``out.lgm_inputs()``)."""
    views = getattr(out, "views", None)
    if views is not None:
        return lgm.reconstruct(views)
    return lgm.reconstruct(**out.lgm_inputs())


# ------------------------------------------------------------------------------------------- profile
class StageProfiler:
    """CUDA events (host clock on CPU) around pipeline stages, by patching instance attributes."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.marks: List = []  # (stage, start event/time, end event/time, host seconds)
        self._restore: List = []

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def wrap(self, obj, attr: str, stage: str) -> None:
        orig = getattr(obj, attr, None)
        if orig is None:
            return

        @functools.wraps(orig)  # keeps the signature (the pipeline inspects scheduler.step's)
        def wrapped(*a, **k):
            s, t = self._mark(), time.perf_counter()
            out = orig(*a, **k)
            self.marks.append((stage, s, self._mark(), time.perf_counter() - t))
            return out

        had = attr in vars(obj)
        self._restore.append((obj, attr, had, vars(obj).get(attr)))
        setattr(obj, attr, wrapped)

    def restore(self) -> None:
        for obj, attr, had, old in reversed(self._restore):
            if had:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)
        self._restore.clear()

    def elapsed(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000


def profile_call(pipe, kind: str, steps: int, device, **extra) -> Dict[str, Any]:
    """One profiled pipeline call (``extra``: call arguments, e.g. a prompt list): per-stage GPU ms and
    host ms, the denoising loop, syncs."""
    prof = StageProfiler(device)
    for obj, attr, stage in ((pipe, "encode_prompt", "text encoder"),
                             (pipe, "encode_image_features", "CLIP vision"),
                             (pipe, "encode_image_latents", "VAE encode (reference)"),
                             (pipe.unet, "prepare_conditions", "conditions"),
                             (pipe.scheduler, "step", "scheduler steps"),
                             (pipe, "decode_latents", "VAE decode")):
        prof.wrap(obj, attr, stage)
    syncs = 0
    try:
        _sync(device)
        t0 = time.perf_counter()
        start = prof._mark()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if prof.cuda:
                torch.cuda.set_sync_debug_mode(1)
            try:
                mv_call(pipe, kind, steps, **extra)
            finally:
                if prof.cuda:
                    torch.cuda.set_sync_debug_mode(0)
        end = prof._mark()
        _sync(device)
        total_host = time.perf_counter() - t0
        syncs = sum(1 for w in caught if "synchroniz" in str(w.message).lower())
    finally:
        prof.restore()
    stages: Dict[str, List[float]] = {}
    for stage, s, e, host in prof.marks:
        d = stages.setdefault(stage, [0, 0.0, 0.0])
        d[0] += 1
        d[1] += prof.elapsed(s, e)
        d[2] += host * 1000
    cond_end = [e for st, s, e, h in prof.marks if st == "conditions"]
    dec_start = [s for st, s, e, h in prof.marks if st == "VAE decode"]
    if cond_end and dec_start:
        loop = prof.elapsed(cond_end[-1], dec_start[0])
        stages["denoising loop (UNet + CFG + scheduler)"] = [steps, loop, float("nan")]
        dec_end = [e for st, s, e, h in prof.marks if st == "VAE decode"][-1]
        stages["device -> host copy + output"] = [1, prof.elapsed(dec_end, end), float("nan")]
    stages["whole call"] = [1, prof.elapsed(start, end), total_host * 1000]
    return dict(stages=stages, syncs=syncs if prof.cuda else float("nan"))


def profile_rows(table: Table, kind: str, mode: str, prof: Dict[str, Any]) -> None:
    for stage, (calls, gpu, host) in prof["stages"].items():
        table.add({"workload": kind, "mode": mode, "stage": stage, "calls": calls, "GPU ms": gpu, "host ms": host,
                   "per call ms": gpu / calls if calls else float("nan")})
    table.add({"workload": kind, "mode": mode, "stage": "host syncs in one call", "calls": prof["syncs"]})


# ------------------------------------------------------------------------------------------- workers
def _worker_env(cache_dir: Path, scratch: Path, threads: Optional[int]) -> Dict[str, str]:
    """A worker's environment: the shared artifact folder, empty Inductor/Triton caches of its own."""
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LGM_CACHE_DIR=str(cache_dir), TORCHINDUCTOR_CACHE_DIR=str(scratch / "inductor"),
               TRITON_CACHE_DIR=str(scratch / "triton"), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if threads:
        env["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
    return env


_RUNNING: set = set()
"""Worker processes alive now (each leads its own process group, with Inductor's compile workers)."""


def kill_workers() -> None:
    """End every worker still running (they run in their own sessions, so nothing else would)."""
    for proc in list(_RUNNING):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def launch_worker(spec: Dict[str, Any], budget: Budget, threads: Optional[int] = None) -> Dict[str, Any]:
    """Run one worker process (a fresh interpreter) to completion or the deadline; its result dict."""
    scratch = Path(spec["scratch"])
    scratch.mkdir(parents=True, exist_ok=True)
    result_path = scratch / "result.json"
    result_path.unlink(missing_ok=True)
    log_path = scratch / "worker.log"
    launched = time.time()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                env=_worker_env(Path(spec["cache_dir"]), scratch, threads), cwd=str(ROOT),
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.add(proc)
        try:
            proc.wait(timeout=max(budget.left(), 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and its compile subprocesses
            proc.wait()
            return dict(error=f"killed at the budget deadline after {time.time() - launched:.0f} s")
        finally:
            _RUNNING.discard(proc)
        if proc.returncode and proc.returncode < 0:
            return dict(error=f"worker ended by signal {-proc.returncode}")
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    if not result_path.is_file():
        return dict(error=f"worker exited {proc.returncode}: {' / '.join(tail)[-300:]}")
    res = json.loads(result_path.read_text())
    if res.get("error"):  # the traceback stays in the run's log
        log(f"  [worker {spec['name']} {spec['phase']}] failed; last lines of its log:\n    " + "\n    ".join(
            log_path.read_text(errors="replace").strip().splitlines()[-15:]))
    if "ready_time" in res:
        res["start_s"] = res["ready_time"] - launched
    return res


def worker_main(spec: Dict[str, Any]) -> int:
    """One compile job in a fresh process (see the module docstring); writes scratch/result.json."""
    res: Dict[str, Any] = {}
    try:
        res = (_lgm_worker if spec["kind"] == "lgm" else _mv_worker)(spec)
    except Exception as exc:
        traceback.print_exc()
        res = dict(res, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    Path(spec["scratch"], "result.json").write_text(json.dumps(res))
    return 0


def _compile_kwargs(spec) -> Dict[str, Any]:
    return {"backend": spec["backend"]} if spec.get("backend") else {}


def _save_output(spec, tensor) -> None:
    from safetensors.torch import save_file

    save_file({"out": torch.as_tensor(np.asarray(tensor) if not torch.is_tensor(tensor) else tensor)
               .float().cpu().contiguous()}, str(Path(spec["scratch"]) / "output.safetensors"))


def load_output(res: Dict[str, Any]):
    from safetensors.torch import load_file

    path = Path(res.get("scratch", "")) / "output.safetensors"
    return load_file(str(path))["out"] if path.is_file() else None


def _lgm_worker(spec) -> Dict[str, Any]:
    device = spec["device"]
    config = lgm_config(spec["quick"])
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = build_lgm(config, device, dtype)
    x = lgm_input(config, spec["batch"], device)
    base = allocated(device)
    model.use_channels_last()
    with torch.inference_mode():
        t0 = time.perf_counter()
        fast = compile_cached(model._forward_gaussians, (x,), "lgm", config, module=model,
                              options={"attention": "sdpa", "channels_last": True}, **_compile_kwargs(spec))
        model._forward_gaussians = fast  # what optimize_for_inference(compile=True) does with CompiledOrEager
        model.use_cuda_graphs()
        out = model.forward_gaussians(x)  # graph capture (no-op on CPU)
        _sync(device)
        res = dict(status=fast.last.status, cache_s=fast.last.seconds, warmup_s=time.perf_counter() - t0,
                   compiled_graphs=fast.last.compiled_graphs, cached_graphs=fast.last.cached_graphs,
                   ready_time=time.time(), scratch=spec["scratch"])
        if spec["phase"] == "warm":
            ms, peak, out = timed(lambda: model.forward_gaussians(x), spec["iters"], spec["warmup"], device, base)
            res.update(ms=ms, peak_gb=peak)
    _save_output(spec, out)
    return res


def _mv_worker(spec) -> Dict[str, Any]:
    device, kind = spec["device"], spec["kind"]
    args = argparse.Namespace(quick=spec["quick"], configs=spec["configs"])
    base0 = allocated(device)
    pipe = build_pipeline(kind, args, device)
    unet = pipe.unet
    fast = PersistentCompile(unet.forward_prepared, f"mv_unet_{kind}", getattr(unet, "config", None), module=unet,
                             options={"fn": "forward_prepared"}, **_compile_kwargs(spec))
    unet.forward_prepared = fast  # both the eager and the CUDA-graph step call unet.forward_prepared
    pipe.use_cuda_graphs = True
    steps = spec["steps"] if spec["phase"] == "warm" else 2  # cold: build the artifact only
    first_s, out = wall(lambda: mv_call(pipe, kind, steps), device)
    entries = list(fast.entries.values())
    res = dict(status="+".join(sorted({e.status for e in entries})) or "not called",
               cache_s=sum(e.seconds for e in entries), warmup_s=first_s,
               compiled_graphs=sum(e.compiled_graphs for e in entries),
               cached_graphs=sum(e.cached_graphs for e in entries), ready_time=time.time(), scratch=spec["scratch"])
    if spec["phase"] == "warm":
        times = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(spec["iters"]):
            dt, out = wall(lambda: mv_call(pipe, kind, steps), device)
            times.append(dt * 1000)
        res.update(ms=statistics.median(times), min_ms=min(times),
                   peak_gb=(torch.cuda.max_memory_allocated() - base0) / 2**30 if device == "cuda" else float("nan"))
        _save_output(spec, out.images)
    return res


class Builders:
    """Cold compiles in background worker processes, ``slots`` at a time, in priority order."""

    def __init__(self, specs: List[Dict[str, Any]], budget: Budget, slots: int, threads: Optional[int]):
        self.results: Dict[str, Dict[str, Any]] = {}
        self.done = {s["name"]: threading.Event() for s in specs}
        self._queue = list(specs)
        self._lock = threading.Lock()
        self.budget, self.threads = budget, threads
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(max(slots, 1))]

    def start(self) -> "Builders":
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                spec = self._queue.pop(0)
            if self.budget.left() < 5:
                res = dict(error="not started: budget spent")
            else:
                try:
                    res = launch_worker(spec, self.budget, self.threads)
                except Exception as exc:  # pragma: no cover - reported in the row
                    res = dict(error=f"{type(exc).__name__}: {exc}")
            self.results[spec["name"]] = res
            log(f"  [compile] cold {spec['name']}: {json.dumps({k: v for k, v in res.items() if k != 'scratch'})}")
            self.done[spec["name"]].set()

    def wait(self, name: str, timeout: float) -> Optional[Dict[str, Any]]:
        return self.results.get(name) if self.done[name].wait(max(timeout, 0)) else None


# ------------------------------------------------------------------------------------------- sections
def section_mv(args, budget, device, prof_table, mv_table, state) -> None:
    cost = COST[device]
    for kind in args.kinds:
        if budget.left() < cost["mv_setup"] + cost["mv_rows"]:
            mv_table.add({"workload": kind, "note": f"skipped: {budget.left():.0f} s of the budget left"})
            continue
        base0 = allocated(device)
        try:
            pipe = build_pipeline(kind, args, device)
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            mv_table.add({"workload": kind, "note": f"ERROR building the pipeline: {type(exc).__name__}: {exc}"[:200]})
            continue
        results: Dict[str, Any] = {}

        def mode_rows(mode: str):
            # eager: torch's own kernels on contiguous memory (the reference of the error column);
            # graphs: the default path of the CLI and the nodes (optimize_for_inference: CUDA graphs,
            # channels-last UNet, fused GroupNorm)
            unet_module.FUSED_GROUPNORM = fused_default and mode == "graphs"
            if mode == "graphs":
                pipe.optimize_for_inference()
            else:
                pipe.unet.to(memory_format=torch.contiguous_format)
                pipe.use_cuda_graphs = False
            mv_call(pipe, kind, args.steps)  # warm-up (and graph capture)
            prof = profile_call(pipe, kind, args.steps, device)
            profile_rows(prof_table, kind, mode, prof)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times, out = [], None
            for _ in range(args.mv_iters):
                dt, out = wall(lambda: mv_call(pipe, kind, args.steps), device)
                times.append(dt * 1000)
            peak = (torch.cuda.max_memory_allocated() - base0) / 2**30 if device == "cuda" else float("nan")
            results[mode] = out.images
            loop = prof["stages"].get("denoising loop (UNet + CFG + scheduler)", [1, float("nan")])
            return dict(ms=statistics.median(times), min_ms=min(times), peak_gb=peak,
                        step_ms=loop[1] / max(loop[0], 1), syncs=prof["syncs"], out=out.images)

        fused_default = unet_module.FUSED_GROUPNORM
        eager = row(mv_table, budget, 0, {"workload": kind, "mode": "eager"},
                    lambda: _mv_row(mode_rows("eager"), None, None))
        if "ms" in eager:
            try:  # noise level: the same eager call with SDPA on its math backend
                from torch.nn.attention import SDPBackend, sdpa_kernel

                pipe.use_cuda_graphs = False
                unet_module.FUSED_GROUPNORM = False
                with sdpa_kernel([SDPBackend.MATH]):
                    noise = max_abs(mv_call(pipe, kind, args.steps).images, results["eager"])
                mv_table.note(f"{kind}: eager fp16 with SDPA's math backend differs from eager by {noise:.2e} "
                              f"(the noise level of the error column)")
            except Exception as exc:
                mv_table.note(f"{kind}: noise level not measured ({type(exc).__name__}: {exc})")
        row(mv_table, budget, 0, {"workload": kind, "mode": "default path (graphs + fused GN + channels-last)"},
            lambda: _mv_row(mode_rows("graphs"), results.get("eager"), eager.get("ms")))
        unet_module.FUSED_GROUPNORM = fused_default
        state.setdefault("mv_eager", {})[kind] = (results.get("eager"), eager.get("ms"))
        if kind == "mvdream" and "throughput" in args.sections:
            state["mv_pipe"] = pipe
        else:
            del pipe
        _free()


def _mv_row(r: Dict[str, Any], eager_images, eager_ms) -> Dict[str, Any]:
    out = r.pop("out")
    r["max|d| vs eager"] = max_abs(out, eager_images) if eager_images is not None else "–"
    r["x vs eager"] = (eager_ms / r["ms"]) if eager_ms else 1.0
    return r


def section_lgm(args, budget, device, table, state) -> None:
    cost = COST[device]
    if budget.left() < cost["lgm_setup"]:
        table.add({"batch": "-", "mode": "LGM section", "note": "skipped: budget"})
        return
    config = lgm_config(args.quick)
    dtype = torch.float16 if device == "cuda" else torch.float32
    inputs = {b: lgm_input(config, b, device) for b in args.lgm_batches}
    ref = build_lgm(config, device, torch.float32).set_attention("math")
    with torch.inference_mode():
        refs = {b: ref.forward_gaussians(x).float() for b, x in inputs.items()}
    del ref
    _free()
    base = allocated(device)
    model = build_lgm(config, device, dtype)
    state["lgm"], state["lgm_refs"] = model, refs
    state["lgm_eager"], state["lgm_orig_ms"] = {}, {}
    for b in args.lgm_batches:
        x = inputs[b]

        def variant(attn: str, graphs: bool):
            model.set_attention(attn).use_cuda_graphs(graphs)
            with torch.inference_mode():
                t0 = time.perf_counter()
                model.forward_gaussians(x)
                _sync(device)
                first = time.perf_counter() - t0
                ms, peak, out = timed(lambda: model.forward_gaussians(x), args.iters, args.warmup, device, base)
            return ms, peak, first, out.float()

        def one(name, attn, graphs):
            def fn():
                ms, peak, first, out = variant(attn, graphs)
                if name == "eager SDPA":
                    state["lgm_eager"][b] = out
                if name.startswith("original"):
                    state["lgm_orig_ms"][b], state["lgm_orig_out"] = ms, out
                eager_out = state["lgm_eager"].get(b)
                orig = state["lgm_orig_ms"].get(b)
                return {"median ms": ms, "x vs original-eq": orig / ms if orig else float("nan"), "peak GB": peak,
                        "first call s": first, "max|d| vs eager fp16": max_abs(out, eager_out),
                        "max|d| vs fp32": max_abs(out, refs[b])}
            return row(table, budget, cost["lgm_row"], {"batch": b, "mode": name}, fn)

        GroupNorm32.native_half_on_cuda = True  # fp16 GroupNorm, as the original's model.half()
        fused = unet_module.FUSED_GROUPNORM
        unet_module.FUSED_GROUPNORM = False  # torch's own GroupNorm and SiLU kernels, as the original
        try:
            orig = one("original-equivalent (math attention, fp16 GN)", "math", False)
        finally:
            unet_module.FUSED_GROUPNORM = fused
        eager = one("eager SDPA", "sdpa", False)
        if "median ms" in orig and "median ms" in eager:  # the baseline's error needs the eager output
            table.update(orig["_index"], "max|d| vs eager fp16", max_abs(state["lgm_orig_out"], state["lgm_eager"][b]))
            table.note(f"batch {b}: eager SDPA is {orig['median ms'] / eager['median ms']:.2f}x faster than the "
                       f"original-equivalent; reference on the H200: {REFERENCE_H200.get(('lgm', b), '-')}")
        one("+ CUDA graphs", "sdpa", True)
        model.use_channels_last(True)  # what optimize_for_inference() adds when the fused GroupNorm is on
        try:
            one("+ channels-last = default path (optimize_for_inference)", "sdpa", True)
        finally:
            model.use_channels_last(False)
    model.set_attention("sdpa").use_cuda_graphs(True)


def section_throughput(args, budget, device, table, state) -> None:
    pipe, lgm = state.get("mv_pipe"), state.get("lgm")
    if pipe is None or lgm is None:
        table.add({"batch": "-", "note": "skipped: needs the MVDream pipeline and the LGM model of the sections above"})
        return
    pipe.optimize_for_inference()  # the default path of the CLI and the nodes
    lgm.set_attention("sdpa").optimize_for_inference()
    for b in args.throughput_batches:
        def fn(b=b):
            prompts = [f"a ceramic owl, variant {i}" for i in range(b)]

            def text_to_gaussians():
                g = text_to_3d(pipe, lgm, prompts, steps=args.steps, seed=0).gaussians
                _sync(device)
                return g

            text_to_gaussians()  # warm-up (graph capture for this batch size)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.throughput_iters):
                dt, g = wall(text_to_gaussians, device)
                times.append(dt)
            med = statistics.median(times)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            # where a batch's time goes: one more call, profiled by stage, and the LGM part alone
            stages = profile_call(pipe, "mvdream", args.steps, device, prompt=prompts, output_type="pt")["stages"]
            views = text_to_views(pipe, prompts, steps=1, seed=0)  # on the GPU, as text_to_3d hands them over
            lgm_s, _ = wall(lambda: (views_to_gaussians(lgm, views), _sync(device)), device)
            loop = stages.get("denoising loop (UNet + CFG + scheduler)", [0, float("nan")])[1]
            return {"objects": b, "s per batch": med, "objects/s": b / med, "peak GB": peak,
                    "denoising s": loop / 1000, "VAE decode s": stages.get("VAE decode", [0, float("nan")])[1] / 1000,
                    "LGM s": lgm_s}
        row(table, budget, COST[device]["throughput"] * (b / 16 + 0.2), {"batch": b}, fn)


def compile_specs(args, device, run_dir: Path) -> List[Dict[str, Any]]:
    """Cold-compile jobs in priority order (the issue's headline first)."""
    common = dict(device=device, quick=args.quick, configs=str(args.configs), cache_dir=str(run_dir / "compiled"),
                  backend=args.compile_backend, iters=args.iters, warmup=args.warmup, steps=args.steps)
    specs = []
    order = [("lgm", 1), ("mvdream", None), ("lgm", 4), ("imagedream", None)]
    if args.quick:  # one job per worker code path (the smoke run's time goes to process starts)
        order = [("lgm", 1), ("imagedream", None)]
    for kind, batch in order:
        if kind == "lgm" and (batch not in args.lgm_batches or "lgm" not in args.sections):
            continue
        if kind != "lgm" and (kind not in args.kinds or "mv" not in args.sections):
            continue
        name = f"lgm_b{batch}" if kind == "lgm" else kind
        specs.append(dict(common, name=name, kind=kind, batch=batch or 1, phase="cold",
                          scratch=str(run_dir / f"{name}_cold")))
    if args.mv_iters and "mv" in args.sections:
        for s in specs:
            if s["kind"] != "lgm":
                s["iters"] = args.mv_iters
    return specs


def section_compiled(args, budget, device, builders: Builders, specs, lgm_table, mv_table, state) -> None:
    cost = COST[device]
    for spec in specs:
        is_lgm = spec["kind"] == "lgm"
        table = lgm_table if is_lgm else mv_table
        base = {"batch": spec["batch"]} if is_lgm else {"workload": spec["kind"]}
        warm_cost = cost["warm_lgm" if is_lgm else "warm_mv"]
        cold = builders.wait(spec["name"], budget.left() - warm_cost)
        if cold is None:
            table.add(dict(base, mode="+ compile cold / warm", note=f"skipped: the cold compile did not finish "
                                                                     f"with {warm_cost} s left for the warm row"))
            continue
        table.add(dict(base, mode="+ compile cold (background; first call)",
                       **{"first call s" if is_lgm else "warm-up s": cold.get("warmup_s", float("nan"))},
                       note=cold.get("error") or f"artifact {cold.get('status')}, {cold.get('compiled_graphs')} "
                                                 f"graphs compiled"))
        if cold.get("error"):
            continue

        def warm_row(spec=spec, is_lgm=is_lgm):
            wspec = dict(spec, phase="warm", scratch=str(Path(spec["scratch"]).with_name(spec["name"] + "_warm")))
            res = launch_worker(wspec, budget)
            if res.get("error"):
                raise RuntimeError(res["error"])
            out = load_output(res)
            note = f"artifact {res['status']} ({res['cached_graphs']} cached, {res['compiled_graphs']} compiled graphs)"
            if is_lgm:
                b = spec["batch"]
                orig = state.get("lgm_orig_ms", {}).get(b)
                return {"median ms": res["ms"], "x vs original-eq": orig / res["ms"] if orig else float("nan"),
                        "peak GB": res["peak_gb"], "first call s": res["warmup_s"], "start s": res["start_s"],
                        "max|d| vs eager fp16": max_abs(out, state.get("lgm_eager", {}).get(b)),
                        "max|d| vs fp32": max_abs(out, state.get("lgm_refs", {}).get(b)), "note": note}
            eager_images, eager_ms = state.get("mv_eager", {}).get(spec["kind"], (None, None))
            return {"ms": res["ms"], "min_ms": res["min_ms"], "peak_gb": res["peak_gb"],
                    "x vs eager": eager_ms / res["ms"] if eager_ms else float("nan"),
                    "max|d| vs eager": max_abs(out, eager_images), "warm-up s": res["warmup_s"],
                    "start s": res["start_s"], "note": note}
        row(table, budget, warm_cost, dict(base, mode="+ compile warm (fresh process, persistent cache)"), warm_row)


# ------------------------------------------------------------------------------------------- main
def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=str(DEFAULT_CONFIGS), help="hub config folder (ImageDream layout)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (GPU 255, --quick 900)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for bench_floor.json / .md")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny models, 2 steps, compile backend 'eager'")
    ap.add_argument("--sections", default="profile,lgm,mv,throughput,compile")
    ap.add_argument("--kinds", default="mvdream,imagedream")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20, help="timed LGM iterations")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mv-iters", type=int, default=3)
    ap.add_argument("--throughput-iters", type=int, default=2)
    ap.add_argument("--compile-slots", type=int, default=None,
                    help="cold compiles at a time in the background (0: after the other rows; GPU 2, --quick 0)")
    ap.add_argument("--compile-threads", type=int, default=6, help="Inductor compile workers per cold compile")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.iters, args.warmup, args.mv_iters = min(args.steps, 2), min(args.iters, 2), 1, 1
        args.throughput_iters = 1
        args.compile_backend = args.compile_backend or "eager"
        args.budget = 900 if args.budget is None else args.budget
        args.compile_slots = 0 if args.compile_slots is None else args.compile_slots
    args.compile_slots = 2 if args.compile_slots is None else args.compile_slots
    args.budget = 255 if args.budget is None else args.budget
    args.sections = [s for s in args.sections.split(",") if s]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.lgm_batches = (1, 4) if not args.quick else (1,)
    args.throughput_batches = (1, 4, 16) if not args.quick else (2,)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    try:
        return run(args)
    finally:
        kill_workers()  # cold compiles whose warm rows did not fit


def run(args) -> int:
    budget = Budget(args.budget)
    t_start = time.monotonic()
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    if device == "cpu" and not args.quick:
        log("no CUDA device: use --quick for the CPU smoke run")
        return 1
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    log(f"bench_floor: {dev_name}, torch {torch.__version__}, budget {args.budget:.0f} s, sections {args.sections}")
    run_dir = Path(tempfile.mkdtemp(prefix="lgm_floor_"))
    prof_table = Table("1. Profile: where one call's time goes (GPU ms from CUDA events; host ms = Python wall time)",
                       ["workload", "mode", "stage", "calls", "GPU ms", "per call ms", "host ms"])
    lgm_table = Table(f"2. LGM {'big' if not args.quick else 'quick'} forward_gaussians, "
                      f"{'fp16' if device == 'cuda' else 'fp32'}",
                      ["batch", "mode", "median ms", "x vs original-eq", "peak GB", "first call s", "start s",
                       "max|d| vs eager fp16", "max|d| vs fp32", "note"])
    mv_table = Table(f"3. Multi-view diffusion, {args.steps} DDIM steps, end to end (prompt/image -> views on the host)",
                     ["workload", "mode", "ms", "min_ms", "x vs eager", "peak_gb", "step_ms", "syncs",
                      "max|d| vs eager", "warm-up s", "start s", "note"])
    tp_table = Table("4. Throughput text -> Gaussians (batched MVDream + batched LGM, CUDA graphs)",
                     ["batch", "objects", "s per batch", "objects/s", "peak GB", "denoising s", "VAE decode s", "LGM s",
                      "note"])
    state: Dict[str, Any] = {}

    specs = compile_specs(args, device, run_dir) if "compile" in args.sections else []
    builders = Builders(specs, budget, args.compile_slots, args.compile_threads)
    if specs and args.compile_slots > 0:
        builders.start()
        log(f"  [compile] {len(specs)} cold compiles started in the background ({args.compile_slots} at a time)")
    for name, fn in (("mv", lambda: section_mv(args, budget, device, prof_table, mv_table, state)),
                     ("lgm", lambda: section_lgm(args, budget, device, lgm_table, state)),
                     ("throughput", lambda: section_throughput(args, budget, device, tp_table, state))):
        if name in args.sections or (name == "mv" and "profile" in args.sections):
            try:
                fn()
            except Exception as exc:  # a whole section failed: say so, keep going
                traceback.print_exc(file=sys.stdout)
                {"mv": mv_table, "lgm": lgm_table, "throughput": tp_table}[name].note(f"section failed: {exc}")
    state.pop("mv_pipe", None)
    _free()
    if specs:
        if args.compile_slots <= 0:
            builders._threads = [threading.Thread(target=builders._run, daemon=True)]
            builders.start()
        section_compiled(args, budget, device, builders, specs, lgm_table, mv_table, state)

    lgm_table.note("original-equivalent = our code with the original's precision recipe: explicit-softmax attention, "
                   "GroupNorm in fp16 (model.half()) with torch's kernels; the other eager/graph rows use the default "
                   "fused Triton GroupNorm+SiLU (lgm_core/models/fused_norm.py) unless LGM_FUSED_NORM=0; ratios are "
                   "against it. Errors: max |difference| of the activated Gaussians (positions in [-1, 1], colours in "
                   "[0, 1]).")
    lgm_table.note("compile rows: torch.compile (Inductor, dynamic=False) + channels-last + CUDA graphs through "
                   "lgm_core.compile_cache; 'first call s' of the warm row = compile-to-first-output in a fresh "
                   "process that has only the persistent artifact; 'start s' = that process's start to ready "
                   "(imports, random weights, artifact load, capture).")
    for kind in args.kinds:
        if ("mv", kind) in REFERENCE_H200:
            mv_table.note(f"{kind} reference on the H200 (not this run): {REFERENCE_H200[('mv', kind)]}")
    mv_table.note("x vs eager: ratio to our eager row (our code has no original-equivalent diffusion mode).")
    tables = [prof_table, lgm_table, mv_table, tp_table]
    text = "\n\n".join(t.markdown() for t in tables)
    log("\n" + text)
    log(f"\ntotal {time.monotonic() - t_start:.0f} s of a {args.budget:.0f} s budget")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_floor.md").write_text(text + "\n")
        (out / "bench_floor.json").write_text(json.dumps(
            {t.title: {"header": t.header, "rows": t.rows, "notes": t.notes} for t in tables}, indent=1))
    except OSError as exc:
        log(f"could not write results to {out}: {exc}")
    kill_workers()
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
