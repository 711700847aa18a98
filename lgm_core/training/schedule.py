"""Learning-rate schedules, planned in optimiser steps (so they are right for any number of processes).

``onecycle`` is the original's ``OneCycleLR`` (cosine; lr from lr/25 up to lr over the warm-up, then
down to lr/25/1e4; AdamW's beta1 cycled 0.95 -> 0.85 -> 0.95 — docs/conventions.md#training). The original
planned its 3000 warm-up steps in *scheduler* steps, which accelerate advanced once per process per
optimiser step, i.e. 3000/G optimiser steps on G GPUs; here ``warmup_steps`` always counts
optimiser steps. ``cosine``: linear warm-up from 0 then cosine to 0 (betas untouched). ``constant``.

The scheduler is stepped once per optimiser step (not prepared by accelerate).
"""

from __future__ import annotations

import math
import warnings

import torch

from .config import TrainConfig


def effective_warmup(cfg: TrainConfig, total_steps: int) -> int:
    """Warm-up length actually used: ``cfg.warmup_steps`` capped at a third of the run (>= 2)."""
    return max(2, min(int(cfg.warmup_steps), total_steps // 3))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """The scheduler for a run of ``total_steps`` optimiser steps (runs shorter than 4 steps use a
    constant learning rate)."""
    total_steps = int(total_steps)
    if cfg.schedule == "constant" or total_steps < 4:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = effective_warmup(cfg, total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=warmup / total_steps)

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def fast_forward(scheduler, steps: int) -> None:
    """Advance a fresh scheduler by ``steps`` optimiser steps (re-planning a resumed run)."""
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(int(steps)):
            scheduler.step()
