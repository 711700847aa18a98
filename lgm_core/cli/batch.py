"""``python -m lgm_core batch``: many prompts or images -> 3D Gaussians, spread over every process.

    python -m lgm_core batch --prompts prompts.txt -o out/              # one process (one GPU or the CPU)
    torchrun --nproc_per_node 8 -m lgm_core batch --prompts prompts.txt -o out/          # 8 GPUs, one host
    accelerate launch --num_processes 8 -m lgm_core batch --images photos/ -o out/     # the same via accelerate

``--prompts``: a text file, one prompt per line (blank lines and lines starting with ``#`` skipped).
``--images``: a folder of images (PNG/JPEG/WebP, sorted by name). Item ``i`` is written to
``OUT/NNNN_<name>/`` (``gaussians.ply``, ``views.png``) with seed ``--seed + i``, so the outputs do not
depend on the number of processes nor on ``--batch-size`` (up to the fp noise of batched kernels): each
process samples ``--batch-size`` items in one batched diffusion call and reconstructs them in one LGM
call (default 16 on CUDA, 1 on the CPU); the files of one batch are written while the GPU works on the
next. Items whose ``gaussians.ply`` already exists are skipped (rerun the
same command to finish an interrupted batch; ``--overwrite`` redoes them). Every process holds one copy
of both models on its own device (``cuda:LOCAL_RANK``); items are split between the processes by
accelerate's ``PartialState.split_between_processes``. At the end process 0 writes ``OUT/batch.json``
(per item: process, seconds; objects/s over the whole run) and prints the summary.
"""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from . import CLIError, progress
from .common import HelpFormatter

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BATCH_SIZE = {"cuda": 16, "cpu": 1}
"""Default ``--batch-size`` per device type (H200, MVDream + LGM big: 4.6 objects/s one at a time, 8.0 at 16)."""


@dataclass(frozen=True)
class BatchItem:
    """One object of a batch: its index (seed offset, output order), the prompt or image, its folder name."""

    index: int
    source: str
    name: str


@dataclass
class ItemResult:
    index: int
    name: str
    process: int
    seconds: float
    """the item's share of its batch's compute time (the batch's seconds / its items)"""
    started: float
    """wall-clock time (``time.time()``) when the item's batch started"""
    gaussians: int
    skipped: bool = False
    finished: float = 0.0
    """wall-clock time when the item's files were written; with ``started`` gives the run's span"""
    batch: int = 1
    """items in the item's batch"""


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit].strip("-")
    return slug or "item"


def read_items(prompts: Optional[str], images: Optional[str]) -> List[BatchItem]:
    """The batch's items, in order; a clear error for an empty or missing list."""
    if (prompts is None) == (images is None):
        raise CLIError("give exactly one of --prompts FILE or --images FOLDER")
    if prompts is not None:
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts: no such file {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        sources = [ln for ln in lines if ln and not ln.startswith("#")]
        names = [_slug(s) for s in sources]
    else:
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images: no such folder {folder}")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        sources = [str(p) for p in files]
        names = [_slug(p.stem) for p in files]
    if not sources:
        raise CLIError(f"nothing to do: {prompts or images} lists no prompts or images")
    return [BatchItem(i, s, f"{i:04d}_{n}") for i, (s, n) in enumerate(zip(sources, names))]


def register(sub) -> None:
    from .generate import add_generation_arguments

    p = sub.add_parser("batch", help="many prompts or images -> 3D Gaussians, over all processes/GPUs",
                       description="Many prompts or images -> 4 views -> 3D Gaussians, the items split over every "
                                   "process (torchrun / accelerate launch: one process per GPU).",
                       formatter_class=HelpFormatter,
                       epilog="Launch with torchrun or accelerate launch for several GPUs (one process each).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="text file, one prompt per line (text -> 3D with MVDream)")
    src.add_argument("--images", help="folder of object images (image -> 3D with ImageDream)")
    p.add_argument("--prompt", default="", help="with --images: optional text prompt for every image")
    p.add_argument("--border-ratio", type=float, default=0.2, help="with --images: free border around the object")
    p.add_argument("--overwrite", action="store_true", help="redo items whose output already exists")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"items per batched diffusion + LGM call (default: {BATCH_SIZE['cuda']} on CUDA, "
                        f"{BATCH_SIZE['cpu']} on the CPU)")
    add_generation_arguments(p, default_model=None, default_guidance=None, turntable=False)
    p.set_defaults(func=run)


def _process_state(cpu: bool):
    """(accelerate PartialState or None, process index, number of processes); ``cpu``: CPU processes
    (gloo) rather than one GPU each (NCCL)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return None, 0, 1
    try:
        from accelerate import PartialState
    except ImportError as exc:  # pragma: no cover - accelerate is in the train extra
        raise CLIError("several processes need accelerate: pip install 'accelerate>=0.26'") from exc
    state = PartialState(cpu=cpu)
    return state, state.process_index, state.num_processes


def run(args) -> int:
    import torch

    from .. import hub
    from ..pipelines import DEFAULT_NEGATIVE_PROMPT, image_to_3d, text_to_3d
    from .common import resolve_device, resolve_dtype
    from .generate import check_generation_arguments, resolve_models

    items = read_items(args.prompts, args.images)
    text = args.prompts is not None
    if args.mv_model is None:
        args.mv_model = (hub.MVDREAM if text else hub.IMAGEDREAM).repo_id
    if args.guidance is None:
        args.guidance = 7.5 if text else 5.0
    check_generation_arguments(args)
    batch_size = args.batch_size
    if batch_size is not None and batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {batch_size}")
    mv_path, lgm_path = resolve_models(args)  # before any process starts work: one error line
    device = resolve_device(args.device)
    state, rank, world = _process_state(cpu=device.type != "cuda")
    if state is not None and device.type == "cuda":
        device = state.device
    dtype = resolve_dtype(args.dtype, device)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    from ..image_io import load_image
    from ..mvdiffusion import MultiViewPipeline
    from ..weights import load_lgm

    if state is not None:
        with state.split_between_processes(items) as share:
            mine = list(share)
    else:
        mine = items
    todo = [it for it in mine if args.overwrite or not (out_dir / it.name / "gaussians.ply").is_file()]
    tag = f"[process {rank}/{world}] " if world > 1 else ""
    progress(f"{tag}{len(mine)} item(s), {len(mine) - len(todo)} already done, on {device} ({dtype})")
    results = [ItemResult(it.index, it.name, rank, 0.0, 0.0, 0, skipped=True) for it in mine if it not in todo]
    if todo:
        pipe = MultiViewPipeline.from_pretrained(mv_path, dtype=dtype, device=device).optimize_for_inference()
        if text == pipe.is_imagedream:
            need = "an MVDream (text)" if text else "an ImageDream (image)"
            raise CLIError(f"{args.mv_model}: --{'prompts' if text else 'images'} needs {need} model")
        model = load_lgm(lgm_path, preset=args.lgm_preset, dtype=dtype, device=device).optimize_for_inference()
        size = batch_size if batch_size is not None else BATCH_SIZE.get(device.type, 1)
        done = 0
        t_run = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgm-batch-writer") as writer:
            pending = None  # the previous batch's file writing, overlapping this batch's GPU work
            for start in range(0, len(todo), size):
                if pending is not None and pending.done():  # a failed write stops the run before more work
                    results += pending.result()
                    pending = None
                chunk = todo[start:start + size]
                started, t0 = time.time(), time.perf_counter()
                sampling = dict(steps=args.steps, guidance=args.guidance, elevation=args.elevation,
                                seed=[args.seed + it.index for it in chunk])
                if text:
                    negative = DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt
                    result = text_to_3d(pipe, model, [it.source for it in chunk], negative_prompt=negative,
                                        **sampling)
                else:
                    result = image_to_3d(pipe, model, [load_image(it.source) for it in chunk],
                                         border_ratio=args.border_ratio, prompt=args.prompt,
                                         negative_prompt=args.negative_prompt or "", **sampling)
                # one transfer per batch; the writer thread formats and writes the files
                views = result.views.to("cpu")
                gaussians = result.gaussians.to("cpu")
                seconds = time.perf_counter() - t0  # the batch's compute, not the wait for the previous writes
                if pending is not None:
                    results += pending.result()  # surfaces a write error of the previous batch here
                pending = writer.submit(_write_chunk, chunk, views, gaussians, out_dir, args.min_opacity, rank,
                                        started, seconds)
                done += len(chunk)
                rate = done / (time.perf_counter() - t_run)
                progress(f"{tag}{done}/{len(todo)} ({chunk[-1].name}): {len(chunk)} item(s) in {seconds:.2f} s, "
                         f"{rate:.2f} objects/s (ETA {(len(todo) - done) / rate:.0f} s)")
            if pending is not None:
                results += pending.result()
    (out_dir / f".batch_process{rank}.json").write_text(json.dumps([asdict(r) for r in results]))
    if state is not None:
        state.wait_for_everyone()
    if rank == 0:
        summary = summarize(out_dir, world, len(items))
        progress(f"{summary['done']} object(s) in {summary['seconds']:.2f} s over {world} process(es): "
                 f"{summary['objects_per_s']:.3f} objects/s; {summary['skipped']} skipped; "
                 f"wrote {out_dir / 'batch.json'}")
    return 0


def _write_chunk(chunk: List[BatchItem], views, gaussians, out_dir: Path, min_opacity: float, rank: int,
                 started: float, seconds: float) -> List[ItemResult]:
    """Write every item of a batch (``views.png``, then ``gaussians.ply``: its presence marks the item done;
    both written atomically); each item's seconds are the batch's, shared equally."""
    from ..image_io import write_image
    from ..ply import save_ply

    out = []
    for k, it in enumerate(chunk):
        folder = out_dir / it.name
        folder.mkdir(exist_ok=True)
        write_image(views.grid(k), folder / "views.png")
        save_ply(gaussians, folder / "gaussians.ply", min_opacity=min_opacity, index=k)
        out.append(ItemResult(it.index, it.name, rank, seconds / len(chunk), started, gaussians.num_gaussians,
                              finished=time.time(), batch=len(chunk)))
    return out


def summarize(out_dir: Path, world: int, total: int) -> dict:
    """Gather every process's results into ``OUT/batch.json``; objects/s over the span from the first
    batch's start to the last item's files written (all processes together)."""
    rows = []
    for r in range(world):
        part = out_dir / f".batch_process{r}.json"
        rows += json.loads(part.read_text())
        part.unlink()
    rows.sort(key=lambda r: r["index"])
    done = [r for r in rows if not r["skipped"]]
    span = (max(r["finished"] for r in done) - min(r["started"] for r in done)) if done else 0.0
    summary = {"items": total, "done": len(done), "skipped": len(rows) - len(done), "processes": world,
               "seconds": span, "objects_per_s": len(done) / span if span > 0 else 0.0, "results": rows}
    tmp = out_dir / "batch.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out_dir / "batch.json")
    return summary
