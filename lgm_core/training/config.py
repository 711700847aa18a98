"""Training configurations: the model architecture (:class:`~lgm_core.models.lgm.LGMConfig`) plus the
recipe (:class:`TrainConfig`), as named presets or JSON files.

Presets ``big``, ``small``, ``lrm`` and ``tiny`` are the original's
(docs/conventions.md#checkpoints-and-configurations); the others are this project's:

* ``tiny-test``: a ~0.9 M-parameter model at 64² (input and renders), 256 Gaussians, batch 2,
  6 views, no LPIPS, for CPU tests and smoke runs (about 2 steps/s on one CPU thread).
* ``tiny-128``: the ``tiny`` architecture at 128² input and renders (4,096 Gaussians), for quick
  demos on one GPU.

A JSON file holds one object whose keys are fields of either dataclass, optionally with
``"preset": NAME`` to start from a preset (default ``small``)::

    {"preset": "tiny", "input_size": 128, "output_size": 128, "splat_size": 32, "batch_size": 4}

Lists are accepted for the tuple fields (``down_channels`` ...). Unknown keys are an error.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..models.lgm import PRESETS as MODEL_PRESETS
from ..models.lgm import LGMConfig

SCHEDULES = ("onecycle", "cosine", "constant")
VIEW_MODES = ("auto", "orbit", "faithful")
MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


@dataclass
class TrainConfig:
    """The training recipe (defaults = the original's, docs/conventions.md#training). Steps count optimiser steps."""

    # ---- data and views
    batch_size: int = 8
    """Samples per process and micro-step (effective batch = batch_size x processes x accumulation)."""
    num_views: int = 12
    """Views per sample: the 4 inputs plus supervision views (the inputs are supervised too)."""
    view_mode: str = "auto"
    """``orbit`` (inputs k, k+ring/4, ... of the manifest's ring), ``faithful`` (4 inputs drawn from
    ``input_view_range``), ``auto``: orbit when the dataset's manifest has ``ring`` > 0."""
    input_view_range: Tuple[int, int] = (36, 72)
    """Faithful mode: view ids (inclusive) the 4 inputs are drawn from, clipped to what exists."""
    val_fraction: float = 0.05
    """Share of objects without a fixed split that are held out for validation (at least one)."""
    split_seed: int = 0
    num_workers: int = -1
    """DataLoader worker processes; -1 = min(8, CPU cores - 1)."""
    # ---- augmentation (input views 1-3 only)
    prob_grid_distortion: float = 0.5
    grid_distortion_strength: float = 0.5
    prob_cam_jitter: float = 0.5
    cam_jitter_strength: float = 0.1
    # ---- loss
    lambda_lpips: float = 1.0
    lpips_start_step: int = 0
    """LPIPS warm-up: λ_lpips is 0 before this step (the collapse of LGM issue #35)..."""
    lpips_ramp_steps: int = 0
    """...then grows linearly to ``lambda_lpips`` over this many steps."""
    # ---- optimisation
    lr: float = 4e-4
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.95)
    schedule: str = "onecycle"
    """``onecycle``: the original's OneCycleLR (cosine, lr 1.6e-5 -> lr -> 1.6e-9, beta1 cycled
    0.95 -> 0.85 -> 0.95); ``cosine``: linear warm-up then cosine to 0, betas fixed; ``constant``."""
    warmup_steps: int = 3000
    """Warm-up length in optimiser steps (capped at a third of the run)."""
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    """``auto`` = bf16 on CUDA, full precision (``no``) elsewhere."""
    gradient_accumulation_steps: int = 1
    seed: int = 0
    # ---- outputs
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    preview_every: int = 500
    validate_every: int = 1000
    val_max_objects: int = 64

    def __post_init__(self) -> None:
        self.input_view_range = tuple(int(v) for v in self.input_view_range)
        self.betas = tuple(float(b) for b in self.betas)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.view_mode not in VIEW_MODES:
            raise ValueError(f"view_mode must be one of {VIEW_MODES}, got {self.view_mode!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.num_views < 4:
            raise ValueError(f"num_views must be at least 4 (the input views), got {self.num_views}")
        if self.batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("batch_size and gradient_accumulation_steps must be at least 1")
        if len(self.input_view_range) != 2 or self.input_view_range[0] > self.input_view_range[1]:
            raise ValueError(f"input_view_range must be [first, last], got {list(self.input_view_range)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class RunConfig:
    """Everything a run is made of: ``model`` (architecture) and ``train`` (recipe); ``name`` is the
    preset or file it came from."""

    model: LGMConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "custom"

    def to_dict(self) -> dict:
        return {"name": self.name, "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(model=LGMConfig(**data["model"]), train=TrainConfig(**data["train"]), name=data.get("name", "custom"))


def _tiny_test_model() -> LGMConfig:
    return LGMConfig(down_channels=(32, 32, 32, 64), down_attention=(False, False, False, True),
                     up_channels=(64,), up_attention=(False,), splat_size=8,
                     input_size=64, output_size=64)


def _presets() -> Dict[str, RunConfig]:
    out = {}
    for name in ("lrm", "small"):
        out[name] = RunConfig(MODEL_PRESETS[name], TrainConfig(num_views=12, batch_size=8), name)
    out["big"] = RunConfig(MODEL_PRESETS["big"], TrainConfig(num_views=8, batch_size=8), "big")
    out["tiny"] = RunConfig(MODEL_PRESETS["tiny"], TrainConfig(num_views=8, batch_size=16), "tiny")
    out["tiny-128"] = RunConfig(
        dataclasses.replace(MODEL_PRESETS["tiny"], input_size=128, output_size=128, splat_size=32),
        TrainConfig(num_views=8, batch_size=16), "tiny-128")
    out["tiny-test"] = RunConfig(
        _tiny_test_model(),
        TrainConfig(num_views=6, batch_size=2, num_workers=0, lambda_lpips=0.0, lr=2e-3, warmup_steps=3,
                    log_every=1, checkpoint_every=10_000, preview_every=10_000, validate_every=10_000,
                    val_max_objects=2), "tiny-test")
    return out


PRESET_NAMES = ("big", "small", "lrm", "tiny", "tiny-128", "tiny-test")

_MODEL_FIELDS = {f.name for f in fields(LGMConfig)}
_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


def preset(name: str) -> RunConfig:
    """A named :class:`RunConfig` (fresh copy)."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown config {name!r}: use a preset ({', '.join(PRESET_NAMES)}) or a .json file")
    return presets[name]


def load_config(name_or_path: str, overrides: Optional[dict] = None) -> RunConfig:
    """A preset name or a JSON file (see the module docstring), then ``overrides`` (field -> value,
    model or training fields) on top."""
    text = str(name_or_path)
    path = Path(text)
    if text in PRESET_NAMES:
        run = preset(text)
        data: dict = {}
    elif path.suffix.lower() == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file holds one JSON object of config fields")
        base = data.pop("preset", "small")
        run = preset(str(base))
        run.name = path.stem
    else:
        raise ValueError(f"unknown config {text!r}: use a preset ({', '.join(PRESET_NAMES)}) or a .json file")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(data) - _MODEL_FIELDS - _TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"{text}: unknown config fields {unknown}; model fields: {sorted(_MODEL_FIELDS)}; "
                         f"training fields: {sorted(_TRAIN_FIELDS)}")
    model_kw = {k: v for k, v in data.items() if k in _MODEL_FIELDS}
    train_kw = {k: v for k, v in data.items() if k in _TRAIN_FIELDS}
    try:
        model = dataclasses.replace(run.model, **model_kw) if model_kw else run.model
        train = dataclasses.replace(run.train, **train_kw) if train_kw else run.train
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{text}: {exc}") from None
    return RunConfig(model, train, run.name)
