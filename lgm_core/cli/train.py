"""``python -m lgm_core train``: train or fine-tune LGM on a multi-view dataset (docs/training.md).

Examples::

    python -m lgm_core train --data DATASET --output runs/tiny --config tiny-test --steps 200
    python -m lgm_core train --data DATASET --output runs/ft --config big --init ashawkey/LGM \\
        --steps 20000 --batch-size 4 --freeze encoder --lpips-weights lpips_vgg.safetensors
    accelerate launch --num_processes 8 -m lgm_core train --data DATASET --output runs/big --config big ...
    python -m lgm_core train --data DATASET --output runs/tiny --steps 200 --resume      (continue)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import CLIError

# CLI flag -> TrainConfig field (overrides of the preset / JSON config)
_OVERRIDES = {
    "batch_size": "batch_size", "num_views": "num_views", "view_mode": "view_mode", "lr": "lr",
    "weight_decay": "weight_decay", "schedule": "schedule", "warmup_steps": "warmup_steps",
    "grad_clip": "grad_clip", "grad_accum": "gradient_accumulation_steps", "mixed_precision": "mixed_precision",
    "workers": "num_workers", "seed": "seed", "val_fraction": "val_fraction", "split_seed": "split_seed",
    "lambda_lpips": "lambda_lpips", "lpips_start": "lpips_start_step", "lpips_ramp": "lpips_ramp_steps",
    "prob_grid_distortion": "prob_grid_distortion", "prob_cam_jitter": "prob_cam_jitter",
    "log_every": "log_every", "checkpoint_every": "checkpoint_every", "keep_checkpoints": "keep_checkpoints",
    "preview_every": "preview_every", "validate_every": "validate_every", "val_max_objects": "val_max_objects",
}


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune LGM on a multi-view dataset (accelerate: CPU, GPU, multi-GPU)",
        description=(
            "Train LGM with the original recipe (4 input views, grid distortion and camera jitter, "
            "MSE + alpha + LPIPS loss, AdamW + OneCycle, bf16 on CUDA). Dataset layout: "
            "<object>/rgb/NNN.png (RGBA) + <object>/pose/NNN.txt (docs/training.md). Multi-GPU/multi-node: "
            "run the same command under 'accelerate launch'. Writes RUN/metrics.jsonl, RUN/checkpoints/step_N/, "
            "RUN/previews/, RUN/validation.jsonl and RUN/model.safetensors (loadable by lgm_core.load_lgm)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder (per-object rgb/ and pose/ folders, manifest.json optional)")
    p.add_argument("--output", required=True, help="run folder (created; holds checkpoints, metrics, previews, model)")
    p.add_argument("--config", default=None,
                   help="preset name (big, small, lrm, tiny, tiny-128, tiny-test) or a JSON file of model/training "
                        "fields, optionally with \"preset\": NAME as the base; default: the run's saved config "
                        "with --resume")
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps of the run (the schedule spans them)")
    p.add_argument("--resume", action="store_true", help="continue from the latest RUN/checkpoints/step_N (bit-for-bit "
                   "when --steps is unchanged); starts from step 0 if there is none")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this step (the schedule still spans --steps; continue with --resume)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget: save a checkpoint and stop when reached")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these weights: a .safetensors file, a folder, or a hub repo id such as ashawkey/LGM "
                        "(tensors whose names and shapes match are copied)")
    p.add_argument("--freeze", nargs="+", default=[], metavar="PART",
                   help="do not train these parts: encoder, mid, decoder, or parameter-name prefixes (e.g. unet.down_blocks.0)")
    p.add_argument("--lpips-weights", default=None, metavar="PATH",
                   help="LPIPS-VGG weights: one .safetensors (VGG-16 features + LPIPS heads) or a folder with "
                        "vgg16-397923af.pth and vgg.pth; default: torchvision cache + the lpips package; without "
                        "weights training uses lambda_lpips = 0")
    g = p.add_argument_group("recipe overrides (default: the config's value)")
    g.add_argument("--batch-size", type=int, default=None, help="samples per process per micro-step")
    g.add_argument("--grad-accum", type=int, default=None, help="micro-steps per optimiser step (gradient accumulation)")
    g.add_argument("--num-views", type=int, default=None, help="views per sample: 4 inputs + supervision (inputs included)")
    g.add_argument("--view-mode", choices=["auto", "orbit", "faithful"], default=None,
                   help="input views: orbit (ring k, k+ring/4, ...), faithful (4 random of ids 36-72), auto (orbit "
                        "when the manifest has a ring)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    g.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default=None, help="learning-rate schedule")
    g.add_argument("--warmup-steps", type=int, default=None, help="warm-up in optimiser steps (capped at a third of the run)")
    g.add_argument("--grad-clip", type=float, default=None, help="gradient-norm clipping")
    g.add_argument("--mixed-precision", choices=["auto", "bf16", "fp16", "no"], default=None,
                   help="autocast precision of the network (auto: bf16 on CUDA, none on CPU)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader worker processes per process (-1: automatic)")
    g.add_argument("--seed", type=int, default=None, help="seed of model init, data order and augmentation")
    g.add_argument("--val-fraction", type=float, default=None, help="share of objects held out for validation")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the train/validation split")
    g.add_argument("--lambda-lpips", type=float, default=None, help="LPIPS loss weight")
    g.add_argument("--lpips-start", type=int, default=None, help="LPIPS warm-up: no LPIPS before this step")
    g.add_argument("--lpips-ramp", type=int, default=None, help="LPIPS warm-up: linear ramp length after --lpips-start")
    g.add_argument("--prob-grid-distortion", type=float, default=None, help="probability of grid distortion per sample")
    g.add_argument("--prob-cam-jitter", type=float, default=None, help="probability of camera jitter per sample")
    g.add_argument("--log-every", type=int, default=None, help="steps between metric flushes (the only per-step host sync)")
    g.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=None, help="how many checkpoints to keep")
    g.add_argument("--preview-every", type=int, default=None, help="steps between preview images (0: none)")
    g.add_argument("--validate-every", type=int, default=None, help="steps between validation passes (0: none)")
    g.add_argument("--val-max-objects", type=int, default=None, help="validation objects per pass, at most")
    h = p.add_argument_group("execution")
    h.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    h.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's choice; 1 is fastest for tiny CPU configs)")
    h.add_argument("--render-backend", choices=["auto", "gsplat", "torch"], default="auto",
                   help="differentiable renderer: gsplat (CUDA) or the PyTorch autograd rasterizer")
    h.add_argument("--channels-last", action="store_true", help="channels-last convolutions (faster on tensor-core GPUs)")
    h.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard in RUN/ (needs tensorboard)")
    h.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp32", help="dtype of RUN/model.safetensors")
    h.add_argument("--no-progress", action="store_true", help="no progress bar / progress lines")
    p.set_defaults(func=run)


def _setup_logging() -> None:
    logger = logging.getLogger("lgm_core")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def build_options(args):
    from ..training.config import RunConfig, load_config
    from ..training.trainer import TrainOptions

    out = Path(args.output)
    overrides = {field: getattr(args, flag) for flag, field in _OVERRIDES.items() if getattr(args, flag) is not None}
    saved = out / "config.json"
    if args.config is None:
        if not (args.resume and saved.is_file()):
            raise CLIError("--config is required (a preset name or a .json file) unless --resume finds RUN/config.json")
        try:
            run = RunConfig.from_dict(json.loads(saved.read_text())["run"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CLIError(f"{saved}: cannot read the saved config ({exc})") from None
        import dataclasses

        run = RunConfig(run.model, dataclasses.replace(run.train, **overrides), run.name)
    else:
        run = load_config(args.config, overrides)
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.stop_at is not None and args.stop_at < 1:
        raise CLIError(f"--stop-at must be at least 1, got {args.stop_at}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise CLIError(f"--max-minutes must be positive, got {args.max_minutes}")
    return TrainOptions(data=Path(args.data), output=out, run=run, steps=args.steps, resume=args.resume,
                        stop_at=args.stop_at, init=args.init, freeze=tuple(args.freeze),
                        lpips_weights=args.lpips_weights, max_minutes=args.max_minutes, cpu=args.cpu,
                        render_backend=args.render_backend, channels_last=args.channels_last,
                        tensorboard=args.tensorboard, save_dtype=args.save_dtype, progress=not args.no_progress)


def run(args) -> int:
    _setup_logging()
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise CLIError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    from ..training.trainer import train

    train(build_options(args))
    return 0
